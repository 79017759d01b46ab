"""Model (a graph of layers) and Sequential (a chain), trained with softmax cross-entropy."""
from __future__ import annotations

import numpy as np

from .augment import check_tta, mirrored
from .kernels.blas import single_threaded_blas
from .layers import LAYER_TYPES, Layer, Softmax
from .losses import CrossEntropyLoss
from .params import FlatParameters, Parameter
from . import memory, planner
from .errors import OutOfMemoryError
from .folding import InferenceLayers
from .fusion import Node, plan_fusion
from .graph import MAX_LAYERS, MODEL_INPUT, trace
from .kernels.merge import add_forward
from .replay import ReplayedInference


class Model:
    """A graph of layers trained with softmax cross-entropy at its output.

    Built from symbolic tensors as in Keras's functional API::

        x = nnjit.Input((3, 32, 32))
        y = nnjit.ReLU()(nnjit.Conv2D(3, 16, 3, padding=1)(x))
        y = nnjit.ReLU()(nnjit.Add()([y, x_projected]))    # a residual sum
        model = nnjit.Model(x, ...)

    Parameters
    ----------
    inputs : SymbolicTensor
        The ``nnjit.Input`` the graph starts from (one input).
    outputs : SymbolicTensor
        The output of the last layer (one output; a Softmax for class
        probabilities, or logits).
    seed : int, optional
        Re-initialises every layer's parameters from ``np.random.default_rng(seed)``,
        in layer order, so a seed fixes all initial weights.

    Layers are numbered so that each comes after the layers it reads
    (``inputs_of[i]``: their indices, ``MODEL_INPUT`` for the model's input);
    the output is the last. The parameters of all layers are packed into one
    flat buffer (:class:`~nnjit.params.FlatParameters`) and renamed
    ``"<layer index>.<name>"`` (``"0.weight"``); optimizers, checkpoints and
    the ONNX exporter all use these names. ``Sequential`` is the chain case.
    """

    def __init__(self, inputs, outputs, seed: int | None = None):
        layers, inputs_of = trace(inputs, outputs)
        self._build(layers, inputs_of, seed)

    def _build(self, layers: list[Layer], inputs_of: list[tuple[int, ...]], seed) -> None:
        self.layers = list(layers)
        self.inputs_of = [tuple(inputs) for inputs in inputs_of]
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not an nnjit Layer")
        if len(self.layers) > MAX_LAYERS:
            raise ValueError(f"{len(self.layers):,} layers: at most {MAX_LAYERS:,}")
        _check_graph(self.layers, self.inputs_of)
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
        self._replayed = ReplayedInference(self._run_inference, self.dtype)
        # The passes of a larger predict, the norms folded once before them.
        self._replayed_pass = ReplayedInference(self._run_folded, self.dtype)
        self._logits = None
        #: What ``backward`` and ``evaluate`` take the gradient and loss of; replace it
        #: for class weights or label smoothing (``CrossEntropyLoss``).
        self.loss = CrossEntropyLoss()
        # Whether the gradient at each layer's output is needed: the layer or one
        # before it on some path holds parameters.
        self._needs_grad = []
        for layer, inputs in zip(self.layers, self.inputs_of):
            self._needs_grad.append(bool(layer.parameters()) or any(
                j >= 0 and self._needs_grad[j] for j in inputs))
        self._grad_sums: dict[int, np.ndarray] = {}  # where gradients of shared outputs add up
        self._pass_shapes: dict[tuple, tuple] = {}  # input shape -> ``_pass_shape``

    def nodes(self) -> list[Node]:
        """The graph as the fusion pass reads it: each layer with the indices it reads."""
        return [Node(layer, inputs) for layer, inputs in zip(self.layers, self.inputs_of)]

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
            nodes = self.nodes()
            made = self._passes[fusion] = (
                plan_fusion(nodes, (len(nodes) - 1,), training=True, enabled=fusion),
                InferenceLayers(nodes, fold=fusion))
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
        """Run the layers in order (at inference: norms folded, Dense layers stacked;
        ``nnjit.folding``). A layer that is not run (its work done by another's
        epilogue, or the identity at inference) passes its input on."""
        training_plan, inference = self._pass()
        plan = training_plan if training else inference.fusion
        if training:
            nodes, skipped = training_plan.nodes, training_plan.absorbed
        else:
            nodes, skipped = inference.nodes, inference.skipped
        plan.apply()
        heads, residuals = plan.heads, plan.residuals
        values = [None] * len(nodes)
        last = len(nodes) - 1
        with single_threaded_blas:  # once for all layers (each kernel call re-enters cheaply)
            for i, node in enumerate(nodes):
                read = [x if j == MODEL_INPUT else values[j] for j in node.inputs]
                if i in skipped:  # an absorbed layer: its head's output (a residual sum's)
                    values[i] = values[heads[i]] if i in heads else read[0]
                    continue
                if i == last and isinstance(node.layer, Softmax):
                    self._logits = read[0]
                if i in residuals:
                    other = residuals[i]
                    values[i] = node.layer.forward(
                        read[0], training, residual=x if other == MODEL_INPUT else values[other])
                    continue
                values[i] = node.layer.forward(read if node.layer.merges else read[0], training)
        if not isinstance(nodes[last].layer, Softmax):
            self._logits = values[last]
        return values[last]

    def _run_inference(self, x: np.ndarray) -> np.ndarray:
        """One inference pass on x, the norms folded anew first: a replay
        (``ReplayedInference``) repeats the folds with the layers' kernels, on the
        parameters as they are at each call, without the dispatch of each."""
        self._inference.refresh()
        return self._run(x, training=False)

    def _run_folded(self, x: np.ndarray) -> np.ndarray:
        """One inference pass on x, the norms as last folded (``predict`` folds them
        once before a batch's passes: MobileNet on 1,000 images runs 63)."""
        return self._run(x, training=False)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Training forward pass; keeps what ``backward`` needs.

        x: float (N, C, H, W) (or whatever the first layer takes).
        Returns a new array, e.g. float32 (N, 10) probabilities for a model
        ending in Softmax.
        """
        return self._run(x, training=True).copy()

    def backward(self, labels) -> float:
        """The loss (``self.loss``: mean softmax cross-entropy unless replaced) of
        the last ``forward`` against ``labels``.

        labels: int (N,). Fills every parameter's ``grad`` and returns the loss.
        A model ending in Softmax starts from the fused gradient
        (probs - onehot) / N at the Softmax input; one ending in logits gets
        the same loss through log-softmax.
        """
        if self._logits is None:
            raise RuntimeError("backward() needs a forward() on the same batch first")
        loss, dy = self.loss(self._logits, labels)
        self._logits = None
        last = len(self.layers) - 1
        if isinstance(self.layers[last], Softmax):  # dy is the gradient at its input
            grads, last = {}, self.inputs_of[last][0]
            if last == MODEL_INPUT:
                return loss
        grads = {last: dy}
        summed: set[int] = set()
        training_plan = self._pass()[0]
        training_plan.apply()  # a predict since the forward may have given others
        with single_threaded_blas:
            for i in range(last, -1, -1):
                dy = grads.pop(i, None)
                if dy is None or not self._needs_grad[i]:
                    continue
                inputs = self.inputs_of[i]
                if i in training_plan.absorbed:  # its head's backward does its part
                    self._add_grad(grads, summed, inputs[0], dy)
                    continue
                wanted = any(j != MODEL_INPUT and self._needs_grad[j] for j in inputs)
                dx = self.layers[i].backward(dy, need_input_grad=wanted)
                if wanted:
                    for j, g in zip(inputs, dx if self.layers[i].merges else (dx,)):
                        self._add_grad(grads, summed, j, g)
        return loss

    def _add_grad(self, grads: dict, summed: set, j: int, g) -> None:
        """Add g to the gradient at layer j's output (read by several layers: each
        adds its share, into a buffer of the model's own, never into a layer's)."""
        if j == MODEL_INPUT or not self._needs_grad[j]:
            return
        if j not in grads:
            grads[j] = g
            return
        if j in summed:
            add_forward(g.reshape(-1), grads[j].reshape(-1), grads[j].reshape(-1), False)
            return
        total = self._grad_sums.get(j)
        if total is None or total.shape != g.shape or total.dtype != g.dtype:
            total = self._grad_sums[j] = memory.empty(g.shape, g.dtype)
        add_forward(grads[j].reshape(-1), g.reshape(-1), total.reshape(-1), False)
        grads[j] = total
        summed.add(j)

    def _batches(self, x, batch_size):
        _check_batch_size(batch_size)
        self._inference.refresh()
        for start in range(0, len(x), batch_size):
            yield start, self._run(x[start:start + batch_size], training=False)

    def predict(self, x: np.ndarray, batch_size: int = 256, tta: str | None = None) -> np.ndarray:
        """Inference only (no caches kept for backward), in batches of at most
        ``batch_size``, each run in passes of as many images as keep a layer's
        output in cache for the next (``planner.inference_pass``).

        x: float (N, C, H, W). Returns a new float array (N, K) of outputs
        (probabilities for a model ending in Softmax); (0, K) for no images.
        ``tta``: test-time augmentation. None runs each image as it is; "flip"
        also runs its left-right mirror and returns the mean of the two outputs
        (twice the work).
        """
        if check_tta(tta):
            out = self.predict(x, batch_size)
            out += self.predict(mirrored(x), batch_size)
            out *= 0.5
            return out
        if len(x) == 0:  # the layers' kernels split work by images: none to split
            rows = self.summary(np.shape(x)[1:])
            return np.empty((0, *(rows[-1][1] if rows else np.shape(x)[1:])), self.dtype)
        _check_batch_size(batch_size)
        # Many images run in passes that keep each layer's output in cache for
        # the next (the planner's size). Within one batch the passes replay
        # (``ReplayedInference``); a loop over several batches runs the layers.
        step = len(x) if len(x) <= min(batch_size, planner.INFERENCE_PASS_MIN) else min(
            batch_size, planner.inference_pass(len(x), *self._pass_shape(x.shape[1:])))
        # Held throughout: passes from several threads take turns (the layers'
        # buffers are shared), and each copies its results out before the next.
        # (BLAS is set to one thread by the parts that call it: ``_run``, a
        # replay that calls BLAS.)
        with single_threaded_blas.lock:
            if len(x) <= batch_size:
                if len(x) <= step:
                    out = self._replayed(x)
                    self._logits = None
                    return out
                self._inference.refresh()
                passes = ((start, self._replayed_pass(x[start:start + step]))
                          for start in range(0, len(x), step))
            else:
                passes = self._batches(x, step)
            out = None
            for start, y in passes:
                if out is None:
                    out = np.empty((len(x),) + y.shape[1:], dtype=y.dtype)
                out[start:start + len(y)] = y
            self._logits = None
            return out

    def _pass_shape(self, input_shape) -> tuple[int, float]:
        """(bytes of one sample's largest layer output, forward FLOPs per byte of
        the input and layer outputs) on input (C, H, W): what
        ``planner.inference_pass`` sizes a pass by."""
        key = tuple(input_shape)
        if key not in self._pass_shapes:
            if len(self._pass_shapes) >= 16:
                self._pass_shapes.clear()
            largest = max(int(np.prod(shape, dtype=np.int64))
                          for _, shape, _ in self.summary(key)) * self.dtype.itemsize
            self._pass_shapes[key] = (largest,
                                       self.forward_flops(key) / self.forward_bytes(key))
        return self._pass_shapes[key]

    def evaluate(self, x: np.ndarray, labels, batch_size: int = 256,
                 tta: str | None = None) -> tuple[float, float]:
        """The loss (``self.loss``, over the whole set) and accuracy of the model on
        (x, labels).

        x: float (N, C, H, W), or a streaming dataset (``nnjit.data.streaming``)
        read batch by batch; labels: int (N,). ``tta`` as in ``predict``: with
        "flip", the accuracy is that of predict's mean outputs, and the loss
        that of their log (for a model ending in Softmax: of the mean
        probabilities). Returns (loss, accuracy).
        """
        labels = np.asarray(labels)
        loss_sum, weight_sum, correct = 0.0, 0.0, 0
        weight = self.loss.weight
        with single_threaded_blas:  # as in predict
            for start, logits in self._evaluated_logits(x, batch_size, tta):
                batch_labels = labels[start:start + len(logits)]
                loss, _ = self.loss(logits, batch_labels)
                # the batches' means, weighted as one mean over the set
                share = len(logits) if weight is None else float(weight[batch_labels].sum())
                loss_sum += loss * share
                weight_sum += share
                correct += int(np.count_nonzero(logits.argmax(axis=1) == batch_labels))
            self._logits = None
        return loss_sum / weight_sum if weight_sum else 0.0, correct / max(len(x), 1)

    def _evaluated_logits(self, x, batch_size: int, tta: str | None):
        """(start, logits (n, K)) for x's batches: what the loss reads, with ``tta``
        the model's mean outputs over the views (their log after a Softmax)."""
        if not check_tta(tta):
            for start, _ in self._batches(x, batch_size):
                yield start, self._logits
            return
        _check_batch_size(batch_size)
        ends_in_softmax = bool(self.layers) and isinstance(self.layers[-1], Softmax)
        for start in range(0, len(x), batch_size):
            out = self.predict(np.asarray(x[start:start + batch_size]), batch_size, tta)
            yield start, np.log(np.maximum(out, np.finfo(out.dtype).tiny)) if ends_in_softmax \
                else out

    def fit(self, x, y=None, *, epochs: int = 1, batch_size: int = 32, optimizer=None,
            lr_schedule="constant", validation_data=None, validation_split: float = 0.0,
            augment=None, callbacks=(), shuffle: bool = True, seed: int = 0, verbose: int = 1,
            initial_epoch: int = 0, initial_batch: int = 0, distributed=None,
            tta: str | None = None, **options):
        """Train on (x, y) for ``epochs`` epochs and return a
        :class:`~nnjit.callbacks.History` (Keras's ``fit``).

        x: images (N, C, H, W) or (N, H, W), uint8 pixels (divided by 255) or
        float; or an nnjit dataset (``nnjit.data.load_dataset``), or a
        streaming one for data larger than memory (``nnjit.data.ArrayStream``,
        ``nnjit.data.FolderStream``), y then None.
        y: int class labels (N,). ``optimizer``: an nnjit Optimizer over
        ``self.parameters()``, a name ("sgd", "momentum", "adam", "adamw", at
        their default rates), or None (the one of the last fit, else momentum
        0.9 at 0.05); kept as ``self.optimizer``. ``lr_schedule``: "constant",
        "cosine" or "onecycle" (over the whole run, from the optimizer's rate)
        or a function step -> rate. ``validation_data`` (x, y), or
        ``validation_split``: the last fraction of (x, y), taken before
        shuffling (Keras's rule); evaluated after each epoch (with the
        test-time augmentation ``tta``, as in ``predict``). ``augment``: an
        ``nnjit.augment.Augment`` or its text ("crop:4,flip"). ``callbacks``:
        ``nnjit.callbacks`` objects. The order of each epoch, the dropout
        masks and the augmentation follow ``seed`` (and the epoch) only, so a
        run resumed with ``initial_epoch`` (and ``initial_batch``, batches of
        that epoch already done) sees the batches an uninterrupted run would.
        ``verbose``: 1 a bar per epoch and a line after it, 2 the line only, 0
        nothing. Ctrl-C stops after the current batch and returns the History
        so far (``history.interrupted`` says where); a nan or inf loss raises
        :class:`~nnjit.errors.TrainingDiverged` with the weights from before
        that step (unless a callback such as ``TerminateOnNaN`` stops the run).
        ``epochs`` counts from 0, so with ``initial_epoch`` it is the epoch to
        reach, as in Keras. ``distributed="mpi"``: under ``mpiexec -n R``, each
        process trains on its share of every global batch of ``batch_size`` and
        the gradients are summed over the ranks before each step
        (``nnjit.distributed``); rank 0 alone shows progress and writes files
        from the callbacks.
        """
        from .fit import fit
        return fit(self, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                   lr_schedule=lr_schedule, validation_data=validation_data,
                   validation_split=validation_split, augment=augment, callbacks=callbacks,
                   shuffle=shuffle, seed=seed, verbose=verbose, initial_epoch=initial_epoch,
                   initial_batch=initial_batch, distributed=distributed, tta=tta, **options)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter and buffer (batch norms' running statistics), in order."""
        return [p.value.copy() for p in self.parameters()] + \
            [b.copy() for _, b in self.named_buffers()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Copy :meth:`get_weights` output back into the parameters and buffers, in place."""
        targets = [p.value for p in self.parameters()] + [b for _, b in self.named_buffers()]
        if len(weights) != len(targets) or any(np.shape(w) != t.shape
                                               for w, t in zip(weights, targets)):
            raise ValueError("weights do not match the model: pass what get_weights returned")
        for w, t in zip(weights, targets):
            t[...] = w

    # -- description -------------------------------------------------------
    def summary(self, input_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], int]]:
        """(layer repr, output shape of one sample, parameter count) for each layer.

        Raises ValueError naming the first layer that does not fit ``input_shape``.
        """
        rows = []
        for i, (layer, inputs) in enumerate(zip(self.layers, self.inputs_of)):
            shapes = [tuple(input_shape) if j == MODEL_INPUT else rows[j][1] for j in inputs]
            try:
                shape = layer.output_shape(shapes if layer.merges else shapes[0])
            except ValueError as err:
                raise ValueError(f"layer {i} ({layer!r}): {err}") from None
            rows.append((repr(layer), shape, sum(p.value.size for p in layer.parameters())))
        return rows

    def input_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The shape of one sample of each layer's (first) input."""
        rows = self.summary(input_shape)
        return [tuple(input_shape) if inputs[0] == MODEL_INPUT else rows[inputs[0]][1]
                for inputs in self.inputs_of]

    def forward_bytes(self, input_shape: tuple[int, ...], batch: int = 1) -> int:
        """Bytes of the input and every layer's output for a batch of ``batch``
        samples of ``input_shape``: what one pass holds at least."""
        values = int(np.prod(input_shape, dtype=object)) + sum(
            int(np.prod(shape, dtype=object)) for _, shape, _ in self.summary(input_shape))
        return batch * values * self.dtype.itemsize

    def forward_flops(self, input_shape: tuple[int, ...]) -> int:
        """Floating-point operations (2 per multiply-add) of one sample's forward
        pass on ``input_shape``, in the layers that describe their work (convs,
        Dense layers; ``describe``): the rest do a few per value."""
        return sum(layer.describe((1, *shape), False)["flops"] or 0
                   for layer, shape in zip(self.layers, self.input_shapes(input_shape))
                   if hasattr(layer, "describe"))

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
        """The architecture as JSON-safe data: [{"type": ..., "config": {...},
        "inputs": [...]}, ...], in layer order; "inputs" (the indices read, -1 the
        model's input) only where the model is not a chain."""
        chain_ = self.is_chain()
        return [{"type": type(layer).__name__, "config": layer.config(),
                 **({} if chain_ else {"inputs": list(inputs)})}
                for layer, inputs in zip(self.layers, self.inputs_of)]

    def is_chain(self) -> bool:
        """True when each layer reads the one before it (a ``Sequential``)."""
        return all(inputs == (i - 1,) for i, inputs in enumerate(self.inputs_of))

    @classmethod
    def from_config(cls, config: list[dict]) -> "Model":
        """Rebuild a model (with fresh weights) from :meth:`config` output: a
        ``Sequential`` when no entry says what it reads, a ``Model`` otherwise.
        Raises ValueError naming the first entry that does not build."""
        if not isinstance(config, list):
            raise ValueError("the architecture must be a list of layers")
        if len(config) > MAX_LAYERS:
            raise ValueError(f"{len(config):,} layers: at most {MAX_LAYERS:,}")
        layers, inputs_of = [], []
        graph = any(isinstance(entry, dict) and "inputs" in entry for entry in config)
        for i, entry in enumerate(config):
            if not isinstance(entry, dict):
                raise ValueError(f"layer {i}: not an object")
            layer_type = LAYER_TYPES.get(entry.get("type"))
            if layer_type is None:
                raise ValueError(f"layer {i}: unknown layer type {entry.get('type')!r}")
            try:
                layers.append(layer_type(**entry.get("config", {})))
            except (TypeError, ValueError) as err:
                raise ValueError(f"layer {i} ({entry.get('type')}): {err}") from None
            inputs = entry.get("inputs", [i - 1]) if graph else [i - 1]
            if not isinstance(inputs, list) or not inputs or not all(
                    isinstance(j, int) and not isinstance(j, bool) for j in inputs):
                raise ValueError(f"layer {i}: inputs must be a list of layer indices")
            inputs_of.append(tuple(inputs))
        if not graph:
            return Sequential(layers)
        model = Model.__new__(Model)
        model._build(layers, inputs_of, None)
        return model

    def __repr__(self) -> str:
        inner = ",\n  ".join(f"{i}: {layer!r} <- {list(inputs)}"
                             for i, (layer, inputs) in enumerate(zip(self.layers, self.inputs_of)))
        return f"Model([\n  {inner},\n])"


def _check_batch_size(batch_size: int) -> None:
    """ValueError unless ``batch_size`` (images per pass of predict/evaluate) is >= 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _check_graph(layers: list[Layer], inputs_of: list[tuple[int, ...]]) -> None:
    """Raise ValueError unless every layer reads layers before it (or the model's
    input), as many as it takes, and every layer's output is read (the last one's
    leaves the model)."""
    if not layers:
        raise ValueError("a model needs at least one layer")
    read = [False] * len(layers)
    input_read = False
    for i, (layer, inputs) in enumerate(zip(layers, inputs_of)):
        for j in inputs:
            if not MODEL_INPUT <= j < i:
                raise ValueError(f"layer {i} ({type(layer).__name__}) reads {j}: a layer reads "
                                 f"the model's input ({MODEL_INPUT}) or a layer before it")
            if j == MODEL_INPUT:
                input_read = True
            else:
                read[j] = True
        if layer.merges and len(inputs) < 2:
            raise ValueError(f"layer {i} ({type(layer).__name__}) merges two or more inputs, "
                             f"reads {len(inputs)}")
        if not layer.merges and len(inputs) != 1:
            raise ValueError(f"layer {i} ({type(layer).__name__}) takes one input, reads "
                             f"{len(inputs)}")
    unread = [i for i in range(len(layers) - 1) if not read[i]]
    if unread:
        raise ValueError(f"the output of layer {unread[0]} ({type(layers[unread[0]]).__name__}) "
                         "is never read: only the last layer's output leaves the model")
    if not input_read:
        raise ValueError("no layer reads the model's input")


class Sequential(Model):
    """Layers applied in order: the chain case of :class:`Model`.

    Parameters
    ----------
    layers : list of Layer
    seed : int, optional
        As for :class:`Model`.
    """

    def __init__(self, layers: list[Layer], seed: int | None = None):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not an nnjit Layer")
            if layer.merges:
                raise ValueError(f"layer {i} ({type(layer).__name__}) merges several inputs: "
                                 "build the model with nnjit.Input and nnjit.Model")
        self._build(layers, [(i - 1,) for i in range(len(layers))], seed)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner},\n])"

