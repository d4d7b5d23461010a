"""Local training and evaluation on one reusable torch model (no Ray here).

A ``Trainer`` owns one ``FlatModel`` and reads examples from the shared dataset arrays
(zero-copy views of the object store under Ray) by index. SGD runs on the flat buffers: a
step is ``w -= lr * (g + wd * w)`` (with optional momentum) as single tensor ops, after the
algorithm's gradient hook (FedProx's proximal term, SCAFFOLD's correction, ...) edits ``g``.
``optimizer="adam"`` instead hands the same ``g + wd * w`` to ``torch.optim.Adam`` (default
betas and eps), created fresh for every ``fit`` over one parameter that aliases the flat buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from raysim.algorithms.base import GradHook, LocalHParams
from raysim.models.flat import FlatModel, Params
from raysim.models.registry import build_model


@dataclass(frozen=True, kw_only=True)
class FitResult:
    params: Params
    loss: float  # mean training loss over every example seen
    steps: int  # optimizer steps taken
    num_examples: int
    adapter: tuple[np.ndarray, np.ndarray] | None = None  # the trained input adapter, when one was given
    buffers: dict[str, np.ndarray] | None = None  # the module's buffers after training, when given some


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    loss: float  # mean
    correct: int
    n: int
    preds: np.ndarray
    labels: np.ndarray

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def pick_device(gpu_ids: list | None = None) -> torch.device:
    """The GPU Ray assigned to this actor when torch can use it, else the CPU."""
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the assigned id(s)
    return torch.device("cpu")


def training_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean training loss of a batch: cross-entropy, or DSAC's eq. 2 squared error
    ||onehot(y) - softmax(logits)||^2 (summed over classes, averaged over the batch)."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, y)
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.mse_loss(logits.softmax(dim=1), onehot, reduction="sum") / logits.shape[0]


def flat_parameter(fm: FlatModel) -> torch.nn.Parameter:
    """The flat parameter buffer as ONE ``nn.Parameter`` sharing its storage (no copy), so that a
    ``torch.optim`` optimizer stepping it updates the module's parameters in place."""
    p = torch.nn.Parameter(fm.flat)
    if p.data_ptr() != fm.flat.data_ptr():  # nn.Parameter(t) aliases t; never train a copy
        raise RuntimeError("the flat parameter does not alias the model's buffer")
    return p


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """An image batch (N, C, H, W) in the channels-last layout, whatever strides it came with.

    The layout decides which convolution kernels torch runs (and so the last bits of every result),
    and for one-channel images the strides alone decide it: a batch gathered from an array numpy
    loaded itself has the channel stride of the array's size-1 axis and runs channels-last, the same
    batch from an array that went through pickle or Ray's object store runs NCHW, 1.5 times slower
    here and rounding differently. Ray and serial runs differed in their last digits, and client
    actors trained 1.6 times slower than plain processes, for this reason alone (issue 13). Every
    batch now runs channels-last: one layout on every backend, the faster one on this CPU."""
    if t.dim() != 4:
        return t
    n, c, h, w = t.shape
    if t.stride() == (h * w * c, 1, w * c, c):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def scoring_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module's forward for scoring (no gradient), the same numbers faster: in an
    ``nn.Sequential``, every ``ReLU`` directly followed by a ``MaxPool2d`` (without indices) runs
    after the pool instead of before it, in place on the pool's fresh output.

    Exact: ReLU is monotone, so max(relu(a), relu(b)) = relu(max(a, b)) for every float (NaN
    propagates through both orders; a -inf padding never wins either way), and the logits are
    bit-identical; only the ReLU now sees a quarter of the elements and writes nothing new. On
    cnn-small (Fashion-MNIST, batch 45, one thread, a loaded machine) a forward pass takes 3.0 ms
    instead of 3.5, and IFCA's 4-model choice 1.54 CPU s per 100 clients instead of 1.68
    (``benchmarks/ifca_choice_cost.py``). The layers
    are the module's own (shared parameters: ``FlatModel.load`` reaches them); a module with no
    such pair, or not a Sequential, is returned as it is. Training keeps the module's own order
    (its backward pass is another computation)."""
    if not isinstance(module, torch.nn.Sequential):
        return module
    layers = list(module)
    order: list[torch.nn.Module] = []
    swapped = False
    i = 0
    while i < len(layers):
        a = layers[i]
        b = layers[i + 1] if i + 1 < len(layers) else None
        if type(a) is torch.nn.ReLU and type(b) is torch.nn.MaxPool2d and not b.return_indices:
            order += [b, torch.nn.ReLU(inplace=True)]
            swapped = True
            i += 2
        else:
            order.append(a)
            i += 1
    return torch.nn.Sequential(*order) if swapped else module


class Trainer:
    def __init__(
        self,
        *,
        model: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        model_params: Mapping[str, object] | None = None,
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape)
        self.fm = FlatModel(build_model(model, input_shape, num_classes, model_params), self.device)
        self.scorer = scoring_module(self.fm.module)  # evaluation's forward (bit-identical logits)
        self.num_classes = num_classes
        if mean:
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self._scale: torch.Tensor | None = (1.0 / (255.0 * s)).to(self.device)
            self._shift: torch.Tensor | None = (-m / s).to(self.device)
        else:
            self._scale = self._shift = None

    # -- batches ---------------------------------------------------------------------------
    def _inputs(self, x: np.ndarray, rotation: int) -> torch.Tensor:
        if not x.flags.writeable:  # a read-only slice of the shared array: copy the batch only
            x = np.array(x)
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if self._scale is not None and self._shift is not None:
            t = t.float().mul_(self._scale).add_(self._shift)
        else:
            t = t.float()
        if rotation:
            t = torch.rot90(t, rotation, dims=(-2, -1))
        return channels_last(t)

    def _adapter(
        self, adapter: tuple[np.ndarray, np.ndarray], grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A per-input affine map z = scale * x + shift (DSAC eq. 10 with a diagonal W) as tensors.
        A size-1 array is expanded to one input's shape (an identity adapter needs no shape)."""
        out = []
        for a in adapter:
            arr = np.asarray(a, dtype=np.float32)
            if arr.size == 1:
                arr = np.full(self.input_shape, float(arr.reshape(-1)[0]), dtype=np.float32)
            out.append(torch.tensor(arr, device=self.device).requires_grad_(grad))
        return out[0], out[1]

    # -- training --------------------------------------------------------------------------
    def fit(
        self,
        params: Params,
        x: np.ndarray,
        y: np.ndarray,
        hparams: LocalHParams,
        *,
        seed: int,
        grad_hook: GradHook | None = None,
        rotation: int = 0,
        idx: np.ndarray | None = None,
        adapter: tuple[np.ndarray, np.ndarray] | None = None,
        buffers: Mapping[str, np.ndarray] | None = None,
    ) -> FitResult:
        """SGD (or Adam) over (x, y) for ``hparams.epochs`` epochs, reshuffled every epoch with ``seed``.

        ``hparams`` (a ``LocalHParams`` record, valid by construction) says how to train; the
        keywords say on what: the client's examples are ``x[idx]`` (``idx`` None: all of ``x``),
        read batch by batch so the shared array is never copied whole; ``y`` is aligned with them
        and already in the client's label space. Returns the new parameters as a fresh numpy vector.
        ``adapter`` (scale, shift), shaped like one input, is applied to every batch as
        scale * x + shift and trained jointly by plain SGD at ``lr``; the result carries it back.

        ``optimizer``: ``"sgd"`` (the flat step above, with ``momentum``) or ``"adam"``
        (``torch.optim.Adam(lr=lr)``, a fresh one per call: no optimizer state survives between
        fits; weight decay is added to the gradient as Adam's own ``weight_decay`` does).
        ``loss``: ``"cross_entropy"`` or ``"squared_error"`` (``training_loss``); the returned
        ``loss`` is the mean of that loss.
        ``buffers`` (``use_buffers``): the module's buffers (BatchNorm running statistics) to train
        from; the result then carries them back as they are after training. None: the module's
        buffers are left as the previous call left them (shared by every client of this host).
        """
        epochs, batch_size, lr = hparams.epochs, hparams.batch_size, hparams.lr
        momentum, weight_decay, loss = hparams.momentum, hparams.weight_decay, hparams.loss
        optimizer = hparams.optimizer
        fm = self.fm
        fm.load(params)
        self.use_buffers(buffers)
        fm.module.train()
        rng = np.random.default_rng(seed)
        torch.random.default_generator.manual_seed(
            seed
        )  # CPU only: torch.manual_seed also seeds CUDA lazily, slowly
        n = len(y)
        yt_all = torch.tensor(np.asarray(y, dtype=np.int64))
        buf = torch.zeros_like(fm.flat) if momentum > 0 else None
        steps, loss_sum, seen = 0, 0.0, 0
        bs = max(1, min(int(batch_size), n))
        ad = self._adapter(adapter, True) if adapter is not None else None
        flat_p = flat_parameter(fm) if optimizer == "adam" else None
        adam = torch.optim.Adam([flat_p], lr=lr) if flat_p is not None else None
        for _ in range(int(epochs)):
            order = rng.permutation(n)
            for start in range(0, n, bs):
                b = order[start : start + bs]
                xb = self._inputs(x[b] if idx is None else x[idx[b]], rotation)
                yb = yt_all[b].to(self.device)
                fm.zero_grad()
                if ad is not None:
                    xb = xb * ad[0] + ad[1]
                batch_loss = training_loss(fm.module(xb), yb, loss)
                batch_loss.backward()
                with torch.no_grad():
                    if ad is not None:
                        for a in ad:
                            if a.grad is not None:
                                a.sub_(a.grad, alpha=lr)
                                a.grad = None
                    g = fm.grad
                    if grad_hook is not None:
                        grad_hook(fm.flat, g)
                    if weight_decay:
                        g.add_(fm.flat, alpha=weight_decay)
                    if adam is not None and flat_p is not None:
                        flat_p.grad = g
                        adam.step()
                    else:
                        if buf is not None:
                            buf.mul_(momentum).add_(g)
                            g = buf
                        fm.flat.add_(g, alpha=-lr)
                steps += 1
                loss_sum += float(batch_loss.detach()) * len(b)
                seen += len(b)
        return FitResult(
            params=fm.read(),
            loss=loss_sum / max(seen, 1),
            steps=steps,
            num_examples=n,
            adapter=None if ad is None else (ad[0].detach().cpu().numpy(), ad[1].detach().cpu().numpy()),
            buffers=None if buffers is None else fm.read_buffers(),
        )

    def use_buffers(self, buffers: Mapping[str, np.ndarray] | None) -> None:
        """Load a client's own buffers into the reused module: a mapping of every buffer, or an
        empty mapping for the model's initial buffers (a client that never trained). None: leave
        them as they are."""
        if buffers is None:
            return
        if buffers:
            self.fm.load_buffers(buffers)
        else:
            self.fm.reset_buffers()

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self,
        params: Params,
        x: np.ndarray,
        y: np.ndarray,
        *,
        rotation: int = 0,
        batch_size: int = 1000,
        idx: np.ndarray | None = None,
        adapter: tuple[np.ndarray, np.ndarray] | None = None,
        buffers: Mapping[str, np.ndarray] | None = None,
    ) -> EvalResult:
        """Loss and predictions of ``params`` (with ``buffers``, as in ``fit``) on (x, y)."""
        fm = self.fm
        ad = self._adapter(adapter, False) if adapter is not None else None
        fm.load(params)
        self.use_buffers(buffers)
        fm.module.eval()
        n = len(y)
        preds = np.empty(n, dtype=np.int64)
        loss_sum = 0.0
        yt = torch.tensor(np.asarray(y, dtype=np.int64))
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            xb = self._inputs(x[rows] if idx is None else x[idx[rows]], rotation)
            if ad is not None:
                xb = xb * ad[0] + ad[1]
            yb = yt[start : start + batch_size].to(self.device)
            out = self.scorer(xb)
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            preds[start : start + batch_size] = out.argmax(1).cpu().numpy()
        yn = np.asarray(y, dtype=np.int64)
        return EvalResult(
            loss=loss_sum / max(n, 1), correct=int((preds == yn).sum()), n=n, preds=preds, labels=yn
        )

    @torch.no_grad()
    def predict_examples(
        self, params: Params, x: np.ndarray, idx: np.ndarray, *, rotation: int = 0, batch_size: int = 1000
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-example results of ``params`` on ``x[idx]``: the predicted class (int64) and the
        log-softmax of the logits (float32, one row per example), for any label space: the
        cross-entropy of example j under label l is ``-logp[j, l]``, as ``F.cross_entropy``
        computes it. The module's buffers are left as they are (no per-client buffers here).
        Batches are ``idx`` in order, ``batch_size`` at a time: the caller fixes the chunking
        (the batched personal evaluation evaluates whole fixed blocks of the dataset, so every
        example's figures are the same whichever other examples are needed)."""
        fm = self.fm
        fm.load(params)
        fm.module.eval()
        n = len(idx)
        preds = np.empty(n, dtype=np.int64)
        logp = np.empty((n, self.num_classes), dtype=np.float32)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            out = self.scorer(self._inputs(x[idx[rows]], rotation))
            logp[rows] = F.log_softmax(out.float(), dim=1).cpu().numpy()
            preds[rows] = out.argmax(1).cpu().numpy()
        return preds, logp

    @torch.no_grad()
    def embed(
        self,
        params: Params,
        x: np.ndarray,
        *,
        rotation: int = 0,
        batch_size: int = 1000,
        idx: np.ndarray | None = None,
        adapter: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Mean penultimate-layer activation over ``x`` (a client's data feature vector)."""
        fm = self.fm
        ad = self._adapter(adapter, False) if adapter is not None else None
        fm.load(params)
        fm.module.eval()
        body = fm.module[:-1]  # type: ignore[index]
        total: torch.Tensor | None = None
        n = len(x) if idx is None else len(idx)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            xb = self._inputs(x[rows] if idx is None else x[idx[rows]], rotation)
            if ad is not None:
                xb = xb * ad[0] + ad[1]
            h = body(xb).flatten(1).sum(0)
            total = h if total is None else total + h
        if total is None:
            raise ValueError("embed() of no examples")
        return (total / n).cpu().numpy().astype(np.float32)
