"""Sequential: a stack of layers trained with softmax cross-entropy."""
from __future__ import annotations

import numpy as np

from .kernels.blas import single_threaded_blas
from .layers import LAYER_TYPES, Layer, Softmax
from .losses import softmax_cross_entropy
from .params import FlatParameters, Parameter
from . import memory, planner
from .errors import OutOfMemoryError
from .folding import InferenceLayers
from .fusion import chain, plan_fusion
from .replay import ReplayedInference


class Sequential:
    """Layers applied in order, with the loss attached to the end.

    Parameters
    ----------
    layers : list of Layer
    seed : int, optional
        Re-initialises every layer's parameters from ``np.random.default_rng(seed)``,
        in layer order, so a seed fixes all initial weights.

    The parameters of all layers are packed into one flat buffer
    (:class:`~nnjit.params.FlatParameters`) and renamed ``"<layer index>.<name>"``
    (``"0.weight"``); optimizers, checkpoints and the ONNX exporter all use
    these names.
    """

    def __init__(self, layers: list[Layer], seed: int | None = None):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not an nnjit Layer")
        if seed is not None:
            rng = np.random.default_rng(seed)
            for layer in self.layers:
                layer.reset_parameters(rng)
        for i, layer in enumerate(self.layers):
            for attr, p in layer.named_parameters():
                p.name = f"{i}.{attr}"
        params = self.parameters()
        self.flat = FlatParameters(params) if params else None
        # What the fusion pass decided, per setting of ``nnjit.using(fusion=...)``:
        # (training plan, inference layers). Layers another's epilogue absorbs (a
        # ReLU fused into a conv's output pass) stay in `layers` for description
        # and export, but are not run.
        self._passes: dict[bool, tuple] = {}
        self._pass()[0].apply()  # the layers called one by one run as in training
        self._replayed = ReplayedInference(self._run_inference, self.dtype, self._bindings)
        self._logits = None
        # Layers before the first one with parameters need no backward pass.
        self._first_trainable = next(
            (i for i, layer in enumerate(self.layers) if layer.parameters()), len(self.layers))

    # -- parameters --------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """Every layer's Parameters, in layer order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> value (views, not copies)."""
        return {p.name: p.value for p in self.parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy values into the parameters in place; strict about names and shapes."""
        params = {p.name: p for p in self.parameters()}
        missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"parameter {name!r} has shape {value.shape}, model expects {p.shape}")
            p.value[...] = value

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """("<layer index>.<buffer>", array) for every layer's buffers, in layer order."""
        return [(f"{i}.{name}", value) for i, layer in enumerate(self.layers)
                for name, value in layer.named_buffers()]

    def get_extra_state(self) -> dict[str, dict]:
        """Layer index -> that layer's extra state (see Layer.get_extra_state), where any."""
        return {str(i): state for i, layer in enumerate(self.layers)
                if (state := layer.get_extra_state())}

    def set_extra_state(self, state: dict) -> None:
        """Restore :meth:`get_extra_state` output; ValueError naming the layer that refuses it."""
        for key, layer_state in state.items():
            try:
                self.layers[int(key)].set_extra_state(layer_state)
            except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as err:
                raise ValueError(f"extra state for layer {key}: {err!r}") from None

    @property
    def dtype(self) -> np.dtype:
        return self.flat.values.dtype if self.flat is not None else np.dtype(np.float32)

    # -- computing ---------------------------------------------------------
    def _pass(self, fusion: bool | None = None):
        """(training FusionPlan, InferenceLayers) for fusion on or off (default: the
        setting in force), made on first use."""
        if fusion is None:
            fusion = planner.settings().fusion
        made = self._passes.get(fusion)
        if made is None:
            made = self._passes[fusion] = (
                plan_fusion(chain(self.layers), (len(self.layers) - 1,), training=True,
                            enabled=fusion),
                InferenceLayers(self.layers, fold=fusion))
        return made

    def fused_layers(self, training: bool = True) -> set[int]:
        """Indices of the layers whose work another layer's epilogue does (and so
        are not run) in training or at inference, by the fusion pass in force.
        At inference, a batch norm folded into the conv or Dense before it counts
        too."""
        training_plan, inference = self._pass()
        if training:
            return set(training_plan.absorbed)
        absorbed = inference.fusion.absorbed
        return {j for i, sources in enumerate(inference.sources)
                for j in (sources if i in absorbed else sources[1:])}

    @property
    def _inference(self) -> InferenceLayers:
        return self._pass()[1]

    def _run(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Run the layers (at inference: norms folded, Dense layers stacked; ``nnjit.folding``)."""
        training_plan, inference = self._pass()
        if training:
            layers, skipped = self.layers, training_plan.absorbed
            training_plan.apply()
        else:
            layers, skipped = inference.layers, inference.skipped
            inference.fusion.apply()
        with single_threaded_blas:  # once for all layers (each kernel call re-enters cheaply)
            for i, layer in enumerate(layers):
                if i in skipped:
                    continue
                if isinstance(layer, Softmax) and layer is self.layers[-1]:
                    self._logits = x
                x = layer.forward(x, training)
        if not isinstance(self.layers[-1], Softmax):
            self._logits = x
        return x

    def _run_inference(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, training=False)

    def _bindings(self) -> list[tuple[object, str]]:
        """(owner, attribute) of every parameter and buffer inference reads, and of
        each parameter's value (see ``ReplayedInference``)."""
        layers = self.layers + [copy for _, inference in self._passes.values()
                                for _, _, copy in inference.pairs]
        return [pair for layer in layers for name, p in layer.named_parameters()
                for pair in ((layer, name), (p, "value"))] + \
            [(layer, name) for layer in layers for name in layer.buffer_names]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Training forward pass; keeps what ``backward`` needs.

        x: float (N, C, H, W) (or whatever the first layer takes).
        Returns a new array, e.g. float32 (N, 10) probabilities for a model
        ending in Softmax.
        """
        return self._run(x, training=True).copy()

    def backward(self, labels) -> float:
        """Mean softmax cross-entropy of the last ``forward`` against ``labels``.

        labels: int (N,). Fills every parameter's ``grad`` and returns the loss.
        A model ending in Softmax starts from the fused gradient
        (probs - onehot) / N at the Softmax input; one ending in logits gets
        the same loss through log-softmax.
        """
        if self._logits is None:
            raise RuntimeError("backward() needs a forward() on the same batch first")
        loss, dy = softmax_cross_entropy(self._logits, labels)
        self._logits = None
        end = len(self.layers) - 1 if isinstance(self.layers[-1], Softmax) else len(self.layers)
        training_plan = self._pass()[0]
        training_plan.apply()  # a predict since the forward may have given others
        with single_threaded_blas:
            for i in range(end - 1, self._first_trainable - 1, -1):
                if i not in training_plan.absorbed:
                    dy = self.layers[i].backward(dy, need_input_grad=i > self._first_trainable)
        return loss

    def _batches(self, x, batch_size):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._inference.refresh()
        for start in range(0, len(x), batch_size):
            yield start, self._run(x[start:start + batch_size], training=False)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Inference only (no caches kept for backward), in batches.

        x: float (N, C, H, W). Returns a new float array (N, K) of outputs
        (probabilities for a model ending in Softmax); (0, K) for no images.
        """
        if len(x) == 0:  # the layers' kernels split work by images: none to split
            rows = self.summary(np.shape(x)[1:])
            return np.empty((0, *(rows[-1][1] if rows else np.shape(x)[1:])), self.dtype)
        # Held throughout: passes from several threads take turns (the layers'
        # buffers are shared), and each copies its results out before the next.
        # (BLAS is set to one thread by the parts that call it: ``_run``, a
        # replay that calls BLAS.)
        with single_threaded_blas.lock:
            if len(x) <= batch_size:
                self._inference.refresh()
                out = self._replayed(x)
                self._logits = None
                return out
            out = None
            for start, y in self._batches(x, batch_size):
                if out is None:
                    out = np.empty((len(x),) + y.shape[1:], dtype=y.dtype)
                out[start:start + len(y)] = y
            self._logits = None
            return out

    def evaluate(self, x: np.ndarray, labels, batch_size: int = 256) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the model on (x, labels).

        x: float (N, C, H, W); labels: int (N,). Returns (loss, accuracy).
        """
        labels = np.asarray(labels)
        loss_sum, correct = 0.0, 0
        with single_threaded_blas:  # as in predict
            for start, _ in self._batches(x, batch_size):
                logits = self._logits
                batch_labels = labels[start:start + len(logits)]
                loss, _ = softmax_cross_entropy(logits, batch_labels)
                loss_sum += loss * len(logits)
                correct += int(np.count_nonzero(logits.argmax(axis=1) == batch_labels))
            self._logits = None
        return loss_sum / max(len(x), 1), correct / max(len(x), 1)

    # -- description -------------------------------------------------------
    def summary(self, input_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], int]]:
        """(layer repr, output shape of one sample, parameter count) for each layer.

        Raises ValueError naming the first layer that does not fit ``input_shape``.
        """
        rows, shape = [], tuple(input_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as err:
                raise ValueError(f"layer {i} ({layer!r}): {err}") from None
            rows.append((repr(layer), shape, sum(p.value.size for p in layer.parameters())))
        return rows

    def forward_bytes(self, input_shape: tuple[int, ...], batch: int = 1) -> int:
        """Bytes of the input and every layer's output for a batch of ``batch``
        samples of ``input_shape``: what one pass holds at least."""
        values = int(np.prod(input_shape, dtype=object)) + sum(
            int(np.prod(shape, dtype=object)) for _, shape, _ in self.summary(input_shape))
        return batch * values * self.dtype.itemsize

    def check_fits(self, input_shape: tuple[int, ...], batch: int = 1) -> None:
        """Raise OutOfMemoryError when a pass on ``batch`` samples of ``input_shape``
        cannot fit this machine's memory (checked from the shapes, before any
        allocation); ValueError naming the first layer that does not fit the shape."""
        need, have = self.forward_bytes(input_shape, batch), memory.physical_bytes()
        if need > have:
            raise OutOfMemoryError(
                f"a pass on {batch} x {tuple(input_shape)} needs {need / 2**30:,.1f} GiB for "
                f"the layers' outputs alone, more than this machine's {have / 2**30:.1f} GiB")

    def config(self) -> list[dict]:
        """The architecture as JSON-safe data: [{"type": ..., "config": {...}}, ...]."""
        return [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]

    @classmethod
    def from_config(cls, config: list[dict]) -> "Sequential":
        """Rebuild a model (with fresh weights) from :meth:`config` output."""
        layers = []
        for i, entry in enumerate(config):
            layer_type = LAYER_TYPES.get(entry.get("type"))
            if layer_type is None:
                raise ValueError(f"layer {i}: unknown layer type {entry.get('type')!r}")
            try:
                layers.append(layer_type(**entry.get("config", {})))
            except (TypeError, ValueError) as err:
                raise ValueError(f"layer {i} ({entry.get('type')}): {err}") from None
        return cls(layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner},\n])"

