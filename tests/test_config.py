import pytest

from raysim.config import ConfigError, apply_overrides, config_from_dict, load_config


def test_every_shipped_config_validates():
    from pathlib import Path

    for path in sorted(Path("configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name, path


def test_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"alpha": 0, "colour": 1}, "algorithm": {"name": "fedprox", "muu": 1}})
    msg = str(e.value)
    assert "data.alpha: Input should be greater than 0 (got 0)" in msg
    assert "data.colour: unknown key" in msg
    assert "algorithm.muu: unknown key" in msg


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            {"rounds": {"clients_per_round": 11}, "data": {"num_clients": 10}},
            "clients_per_round=11 is larger",
        ),
        ({"resources": {"num_gpus": 1.5}}, "cannot be placed"),
        ({"algorithm": {"name": "nope"}}, "unknown algorithm 'nope'; valid names:"),
        ({"model": {"name": "vgg"}}, "unknown model 'vgg'"),
        ({"data": {"partition": "rotation", "num_groups": 5}}, "num_groups must be <= 4"),
        ({"data": {"dataset": "synthetic"}}, "set model.name to 'mlp'"),
        ({"local": {"lr": "fast"}}, "local.lr"),
        ({"resources": {"clients_per_actor": 0}}, "resources.clients_per_actor"),
    ],
)
def test_impossible_values_are_refused(raw, needle):
    with pytest.raises(ConfigError, match=None) as e:
        config_from_dict(raw)
    assert needle in str(e.value)


def test_overrides_are_typed_and_nested():
    raw = apply_overrides(
        {"rounds": {"num_rounds": 5}}, ["rounds.num_rounds=7", "algorithm.mu=0.1", "algorithm.name=fedprox"]
    )
    cfg = config_from_dict(raw)
    assert cfg.rounds.num_rounds == 7 and cfg.algorithm.params.mu == 0.1
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["rounds.num_rounds"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_actor_count_rule():
    cfg = config_from_dict({"data": {"num_clients": 100}, "resources": {"clients_per_actor": 7}})
    assert cfg.num_client_actors(2, 0) == 15  # ceil(100 / 7)
    auto = config_from_dict({"data": {"num_clients": 100}})
    assert auto.num_client_actors(cluster_cpus=2, cluster_gpus=0) == 2
    gpu = config_from_dict({"data": {"num_clients": 100}, "resources": {"num_gpus": 0.25, "num_cpus": 0.5}})
    assert gpu.num_client_actors(cluster_cpus=16, cluster_gpus=2) == 8  # 2 GPUs / 0.25
    few = config_from_dict({"data": {"num_clients": 3}, "rounds": {"clients_per_round": 3}})
    assert few.num_client_actors(64, 0) == 3


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
