import os
from pathlib import Path

import pytest
import yaml

from raysim.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    check_data_available,
    check_output_dir,
    config_from_dict,
    load_config,
)
from tests.conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# configs/*.yaml that README.md names (sweep specs live in configs/tune/); others may be added
NAMED_IN_README = {
    "quickstart.yaml",
    "fedavg_fmnist.yaml",
    "fedprox_fmnist.yaml",
    "scaffold_fmnist.yaml",
    "dsac_fmnist.yaml",
    "fedavg_pathological_fmnist.yaml",
    "dsac_mnist.yaml",
    "dsac_cifar10.yaml",
    "genetic_cfl_fmnist.yaml",
    "fedavg_genetic_baseline_fmnist.yaml",
    "ascfl_rotated_fmnist.yaml",
    "pfedht_fmnist.yaml",
    "pfedht_fedavg_fmnist.yaml",
    "pfedme_fmnist.yaml",
    "fedrod_fmnist.yaml",
    "fedbn_fmnist.yaml",
}


def test_every_shipped_config_validates():
    paths = sorted(CONFIGS.glob("*.yaml"))  # anchored to the repository, wherever pytest runs
    assert NAMED_IN_README <= {p.name for p in paths}, NAMED_IN_README - {p.name for p in paths}
    for path in paths:
        cfg = load_config(path)
        assert cfg.name == path.stem, path  # README's run directories: runs/<config name>


def test_errors_name_the_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"alpha": 0, "colour": 1}, "algorithm": {"name": "fedprox", "muu": 1}})
    msg = str(e.value)
    assert "data.alpha: Input should be greater than 0 (got 0)" in msg
    assert "data.colour: unknown key" in msg
    assert "algorithm.muu: unknown key" in msg


def test_an_unknown_key_lists_the_valid_keys_of_its_section():
    def message(raw):
        with pytest.raises(ConfigError) as e:
            config_from_dict(raw)
        return str(e.value)

    rounds = "checkpoint_every, clients_per_round, deadline_s, eval_every, num_rounds, personal_eval"
    assert f"rounds.bogus: unknown key (check the spelling); valid keys of rounds: {rounds}" in message(
        {"rounds": {"bogus": 1}}
    )
    top = "algorithm, data, local, model, name, output, resources, rounds, seed"
    assert f"colour: unknown key (check the spelling); valid keys at the top level: {top}" in message(
        {"colour": 1}
    )
    # the algorithm section's keys depend on the algorithm it names
    ifca = "central_lr, init, init_noise, name, num_clusters, select_examples, select_on"
    assert f"valid keys of algorithm 'ifca': {ifca}" in message({"algorithm": {"name": "ifca", "muu": 1}})
    assert "valid keys of algorithm 'fedavg': central_lr," in message({"algorithm": {"mu": 1}})


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


ASCFL_KEYS = load_config(CONFIGS / "ascfl_rotated_fmnist.yaml").algorithm.model_extra


def test_a_new_algorithm_name_starts_from_its_defaults_and_says_what_it_dropped(capsys):
    """Issue 24: --set algorithm.name=ifca on the AS-CFL config gave 17 "unknown key" errors."""
    cfg = load_config(CONFIGS / "ascfl_rotated_fmnist.yaml", ["algorithm.name=ifca"])
    assert cfg.algorithm.name == "ifca"
    assert cfg.algorithm.params == cfg.algorithm.params.__class__()  # every one of IFCA's defaults
    note = capsys.readouterr().err
    assert "'ascfl' -> 'ifca'" in note and "dropped ascfl's keys: incentive, theta," in note
    assert all(key in note for key in ASCFL_KEYS)
    # the 17 keys the issue's user met, each named once, plus issue 22's similarity_layers,
    # beta_calibration and beta_margin
    assert len(ASCFL_KEYS) == 20
    # the rest of the config is the file's
    assert cfg.data.partition == "rotation" and cfg.local.lr == 0.1 and cfg.rounds.num_rounds == 100


@pytest.mark.parametrize("order", ["name first", "name last"])
def test_keys_set_in_the_same_command_still_apply(order, capsys):
    sets = ["algorithm.num_clusters=3", "algorithm.select_on=val"]
    sets = ["algorithm.name=ifca", *sets] if order == "name first" else [*sets, "algorithm.name=ifca"]
    cfg = load_config(CONFIGS / "ascfl_rotated_fmnist.yaml", sets)
    assert cfg.algorithm.params.num_clusters == 3 and cfg.algorithm.params.select_on == "val"
    # a key the user sets that the new algorithm does not take is still an error, with its keys
    with pytest.raises(ConfigError, match="algorithm.theta: unknown key.*valid keys of algorithm 'ifca'"):
        load_config(CONFIGS / "ascfl_rotated_fmnist.yaml", ["algorithm.name=ifca", "algorithm.theta=0.5"])


def test_a_knob_both_algorithms_share_is_kept_and_a_namesake_is_not(capsys):
    # FedProx takes central_lr from FedAvg's params: the same knob, kept (mu is dropped going back)
    raw = {"algorithm": {"name": "fedavg", "central_lr": 0.5}}
    assert (
        config_from_dict(apply_overrides(raw, ["algorithm.name=fedprox"])).algorithm.params.central_lr == 0.5
    )
    assert capsys.readouterr().err == ""  # nothing dropped, nothing said
    back = apply_overrides({"algorithm": {"name": "fedprox", "mu": 0.1}}, ["algorithm.name=fedavg"])
    assert (
        back == {"algorithm": {"name": "fedavg"}} and "dropped fedprox's keys: mu" in capsys.readouterr().err
    )
    # AS-CFL's beta (split threshold 0.8) is not pFedMe's beta (the server's step, default 1)
    pfedme = load_config(CONFIGS / "ascfl_rotated_fmnist.yaml", ["algorithm.name=pfedme"])
    assert pfedme.algorithm.params.beta == 1.0
    assert "beta" in capsys.readouterr().err.split("dropped ascfl's keys:")[1]
    # pFedHN is pFedHT's machinery: the architecture's knobs carry over; the optimiser's, which
    # pFedHN re-declares with its reference defaults, are dropped (pFedHT's Adam would be kept else)
    hn = load_config(CONFIGS / "pfedht_fmnist.yaml", ["algorithm.name=pfedhn", "model.name=cnn-small"])
    ht = load_config(CONFIGS / "pfedht_fmnist.yaml").algorithm.model_extra
    assert "hn_optimizer, hn_lr, embed_lr" in capsys.readouterr().err
    kept = {k: v for k, v in ht.items() if k not in ("hn_optimizer", "hn_lr", "embed_lr")}
    assert hn.algorithm.model_extra == kept and hn.algorithm.params.hn_optimizer == "sgd"


def test_overrides_that_keep_the_algorithm_drop_nothing(capsys):
    raw = {"algorithm": {"name": "fedprox", "mu": 0.1}}
    assert (
        apply_overrides(raw, ["algorithm.name=fedprox", "rounds.num_rounds=2"])["algorithm"]
        == raw["algorithm"]
    )
    with pytest.raises(ConfigError, match="algorithm.muu: unknown key"):  # a typo stays an error
        config_from_dict(apply_overrides(raw, ["algorithm.muu=1"]))
    # an unknown new name drops nothing: the error is about the name
    with pytest.raises(ConfigError, match="unknown algorithm 'ifcaa'"):
        load_config(CONFIGS / "ascfl_rotated_fmnist.yaml", ["algorithm.name=ifcaa"])
    assert capsys.readouterr().err == ""
    assert raw == {"algorithm": {"name": "fedprox", "mu": 0.1}}  # the input is not changed


def test_the_api_switches_algorithms_with_dict_overrides_too(capsys):
    from raysim import api

    path = CONFIGS / "ascfl_rotated_fmnist.yaml"
    dotted = api.load_config(path, {"algorithm.name": "ifca", "algorithm.num_clusters": 4})
    nested = api.load_config(path, {"algorithm": {"name": "ifca", "num_clusters": 4}})
    assert dotted == nested and dotted.algorithm.model_extra == {"num_clusters": 4}
    assert capsys.readouterr().err.count("dropped ascfl's keys") == 2


def test_actor_count_rule():
    cfg = config_from_dict({"data": {"num_clients": 100}, "resources": {"clients_per_actor": 7}})
    assert cfg.num_client_actors(2, 0) == 15  # ceil(100 / 7)
    auto = config_from_dict({"data": {"num_clients": 100}})
    assert auto.num_client_actors(cluster_cpus=2, cluster_gpus=0) == 2
    gpu = config_from_dict({"data": {"num_clients": 100}, "resources": {"num_gpus": 0.25, "num_cpus": 0.5}})
    assert gpu.num_client_actors(cluster_cpus=16, cluster_gpus=2) == 8  # 2 GPUs / 0.25
    few = config_from_dict({"data": {"num_clients": 3}, "rounds": {"clients_per_round": 3}})
    assert few.num_client_actors(64, 0) == 3


def test_auto_actors_leave_the_server_actor_its_share():
    """configs/pfedht_fmnist.yaml on a 2-CPU machine: 1-CPU client actors beside a 1-CPU server
    make one client actor, not two (3 CPUs asked of 2)."""

    def auto(**res):
        return config_from_dict({"data": {"num_clients": 50}, "resources": res})

    assert auto(server_cpus=1).num_client_actors(2, 0) == 1
    assert auto(server_cpus=0).num_client_actors(2, 0) == 2
    assert auto(server_cpus=1.5, num_cpus=0.5).num_client_actors(4, 0) == 5  # (4 - 1.5) / 0.5
    # GPUs: (2 - 1) / 0.25 = 4 GPU actors fit beside a 1-GPU server (the 16 CPUs would hold 15)
    assert auto(num_gpus=0.25, server_gpus=1, server_cpus=1).num_client_actors(16, 2) == 4
    # at least one: if even that does not fit, the backend's resource check refuses it with the numbers
    assert auto(server_cpus=4).num_client_actors(2, 0) == 1
    # the serial backend's server is no actor: it holds nothing back
    assert auto(server_cpus=1, backend="serial").num_client_actors(2, 0) == 2
    # a fixed count is left as it is
    assert auto(server_cpus=1, num_actors=3).num_client_actors(2, 0) == 3


def test_a_sweep_trial_starts_exactly_the_client_actors_its_placement_group_holds(tmp_path):
    """Inside a trial the run sizes itself to the group's share (server bundle included): it must
    count the same client actors the group was built with, not one per server CPU more."""
    from tests.conftest import tiny_config
    from tuning.resources import client_bundle_count, trial_resources, trial_share

    cfg = tiny_config(tmp_path, resources__backend="ray", resources__num_cpus=1.0, resources__server_cpus=1.0)
    pgf = trial_resources(cfg, cluster_cpus=4, cluster_gpus=0)
    share = trial_share(pgf, "ray")
    assert client_bundle_count(cfg, pgf) == 3 == cfg.num_client_actors(share.cpus, share.gpus)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def _yaml(tmp_path, raw=None):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw or {"data": {"dataset": "digits", "num_clients": 4}}))
    return path


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("local.lr=.inf", "local.lr"),
        ("local.lr=.nan", "local.lr"),
        ("local.weight_decay=-.inf", "local.weight_decay"),
        ("data.synthetic_alpha=.inf", "data.synthetic_alpha"),
        ("rounds.deadline_s=.inf", "rounds.deadline_s"),
        ("resources.num_cpus=.nan", "resources.num_cpus"),
        ("resources.server_gpus=.inf", "resources.server_gpus"),
        ("seed=.inf", "seed"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(_yaml(tmp_path), [override])
    assert f"{field}: must be a finite number" in str(e.value)


def test_server_resources_default_to_nothing_and_follow_the_gpu_fraction_rule():
    res = config_from_dict({}).resources
    assert res.server_cpus == 0 and res.server_gpus == 0
    ok = config_from_dict({"resources": {"server_cpus": 2, "server_gpus": 0.5}}).resources
    assert (ok.server_cpus, ok.server_gpus) == (2, 0.5)
    assert config_from_dict({"resources": {"server_gpus": 2}}).resources.server_gpus == 2
    with pytest.raises(ConfigError, match=r"resources\.server_gpus: 1\.5 GPUs for the server actor cannot"):
        config_from_dict({"resources": {"server_gpus": 1.5}})
    with pytest.raises(ConfigError, match=r"resources\.server_cpus: Input should be greater than or equal"):
        config_from_dict({"resources": {"server_cpus": -1}})


def test_a_data_dir_that_is_not_a_directory_is_refused(tmp_path):
    check_data_available(config_from_dict({"data": {"dataset": "digits", "data_dir": str(tmp_path)}}))
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for where, why in ((tmp_path / "missing", "it does not exist"), (a_file, "it is not a directory")):
        cfg = config_from_dict({"data": {"dataset": "digits", "data_dir": str(where)}})
        with pytest.raises(ConfigError) as e:
            check_data_available(cfg)
        msg = str(e.value)
        assert msg.startswith(f"data.data_dir={str(where)!r}: no such directory ({why}); fix the path")
        assert "built in" in msg
    # a file-backed dataset also says where its files must go
    cifar = config_from_dict(
        {
            "data": {"dataset": "cifar10", "data_dir": str(tmp_path / "missing")},
            "model": {"name": "cnn-cifar"},
        }
    )
    with pytest.raises(ConfigError, match=r"^data\.data_dir=.*no such directory.*cifar-10-batches-py"):
        check_data_available(cifar)


def _out(path) -> ExperimentConfig:
    return config_from_dict({"output": {"dir": str(path)}})


def test_check_output_dir_accepts_what_the_run_can_create_and_creates_nothing(tmp_path):
    check_output_dir(_out(tmp_path))  # exists, writable
    check_output_dir(_out(tmp_path / "a" / "b" / "runs"))  # created later, by the run
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_refuses_a_file_a_path_under_a_file_and_a_dangling_link(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    cases = [
        (a_file, "is a file, not a directory"),
        (a_file / "runs", f"cannot be created: {str(a_file)!r} is a file, not a directory"),
        (a_file / "a" / "b", f"cannot be created: {str(a_file)!r} is a file"),
        (link, "is a dangling symbolic link"),
        (link / "runs", "is a dangling symbolic link, not a directory"),
    ]
    for path, why in cases:
        with pytest.raises(ConfigError) as e:
            check_output_dir(_out(path))
        msg = str(e.value)
        assert msg.startswith(f"output.dir={str(path)!r}") and why in msg, msg
        assert "set output.dir to a directory you can write to" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]


def test_check_output_dir_refuses_a_read_only_parent_or_dir(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # os.access says yes to root whatever the mode bits, so pretend: `ro` is read-only
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != ro and real_access(p, mode))
    with pytest.raises(
        ConfigError, match=r"output\.dir='.*/ro/runs' cannot be created: '.*/ro' is not writable"
    ):
        check_output_dir(_out(ro / "runs"))
    with pytest.raises(ConfigError, match=r"output\.dir='.*/ro' is not writable"):
        check_output_dir(_out(ro))
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only directory")
def test_check_output_dir_refuses_a_really_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_output_dir(_out(ro / "runs"))
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    ("algorithm", "model", "message"),
    [
        (
            {"name": "pfedht"},
            "mlp",
            r"model.name 'mlp' cannot serve algorithm 'pfedht': .*use model 'vit-tiny'",
        ),
        ({"name": "fedper", "personal": "qkv"}, "cnn-small", r"cannot serve algorithm 'fedper': .*Q/K/V"),
        ({"name": "fedbn"}, "cnn-small", r"cannot serve algorithm 'fedbn': .*model.name: cnn-bn"),
        ({"name": "fedavg"}, "cnn-bn", r"'cnn-bn' has BatchNorm running statistics.*keeps them \(fedbn\)"),
        ({"name": "pfedht"}, "cnn-bn", r"cannot serve algorithm 'pfedht'"),
    ],
)
def test_a_model_the_algorithm_cannot_use_is_a_config_error(tmp_path, algorithm, model, message):
    raw = tiny_config(tmp_path).to_dict()
    raw["algorithm"], raw["model"]["name"] = algorithm, model
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_models_the_algorithms_need_are_accepted(tmp_path):
    for algorithm, model in [
        ("pfedht", "vit-tiny"),
        ("fedbn", "cnn-bn"),
        ("fedper", "mlp"),
        ("pfedhn", "cnn-small"),
    ]:
        raw = tiny_config(tmp_path).to_dict()
        raw["algorithm"], raw["model"]["name"] = {"name": algorithm}, model
        assert config_from_dict(raw).model.name == model
