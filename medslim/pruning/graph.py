"""Channel groups of a network, read from the graph it actually executes.

Pruning a channel touches every layer that produces, normalises or consumes
it, and a U-Net couples channels across its skips (``torch.cat``) and residual
blocks (``+``). Torch-Pruning infers widths recursively from module types and
fails on MONAI U-Nets: a ``PReLU(1)`` has no width to report, and an in-place
activation after an instance norm hides the norm's output behind a view.
medslim never guesses a width: every width comes from a tensor shape observed
in a real trace.

How: ``torch.export.export(model, (x,), strict=False)`` runs ``forward`` once
with fake tensors and records the ATen graph (the "training IR"): convs, norms,
``linear``, ``prelu``, ``cat``, ``add``... stay single ops, every node carries
its output shape (``meta["val"]``) and the module call it came from
(``meta["nn_module_stack"]``), and the graph signature maps weight inputs to
their state-dict names, hence to module paths. Python control flow runs as
usual, so MONAI's list-of-heads tricks and odd-size interpolations trace like
any forward. We prefer it to forward hooks because hooks see modules, not the
functional ``torch.cat`` / ``+`` between them, and to ``torch.fx.symbolic_trace``
because that cannot follow shape-dependent Python code.

The walk gives every tensor a *layout*: what its dim 1 is made of, as a tuple
of segments ``(group, factor)`` in order. A conv/convT/Linear output starts a
new group; per-channel ops (activations, PReLU, norms, pooling, resizing,
padding, dropout, spatial slicing, dtype casts) pass the layout on; ``cat`` on
dim 1 concatenates layouts; ``add``/``mul``/``sub``... of aligned tensors merge
their groups (one mask for all); ``flatten`` before a Linear multiplies each
segment's ``factor`` (features per channel). Segments are always whole groups:
a group is only ever sliced at segment boundaries (a ``chunk`` of a ``cat``),
and slicing inside a group makes it non-prunable. Every layout is checked
against the observed width; any op the walk does not know marks the channels
it touches non-prunable and leaves a note naming the op and module.

Limits: the trace is of one input shape and one mode. Eval mode is traced;
if some parameters never run in eval (deep-supervision heads of medslim's
U-Net), the training-mode forward is traced as well and both are merged; if
that trace fails, nothing is pruned. Outputs computed but left unused in the
trace (DynUNet stores its heads on the module in eval) are never pruned.
General grouped convs, channel shuffles, attention/matmul over channels,
reductions over channels and per-channel parameters used functionally are not
pruned (noted). Weight sharing across modules is not supported.
"""

from __future__ import annotations

import copy
import difflib
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from medslim.errors import MedslimError

Layout = tuple  # tuple of (group id, factor) segments along dim 1
ExampleInput = Union[torch.Tensor, Sequence[torch.Tensor]]
MASK_ATTR = "_medslim_masks"


class PruningError(MedslimError):
    """A model, group or index set that the pruning engine cannot work with."""


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Producer:
    """A layer whose output channels are the group's channels.

    ``dim`` is the weight dim holding them (0 for conv and Linear, 1 for a
    transposed conv, whose weight is (in, out/groups, k...)); the bias holds
    them on dim 0. A ``depthwise`` conv (groups == in == out) maps channel i to
    channel i, so its input and output are the same group and ``offset`` is
    where the group starts among its channels.
    """

    module: str
    dim: int = 0
    offset: int = 0
    depthwise: bool = False


@dataclass(frozen=True)
class Consumer:
    """A layer that reads the group's channels as input.

    ``dim`` is the weight dim of input channels (1 for conv and Linear, 0 for a
    transposed conv); the group starts at input channel ``offset`` (at feature
    ``offset`` for a Linear after a flatten, where each channel is ``factor``
    consecutive features).
    """

    module: str
    dim: int
    offset: int = 0
    factor: int = 1


@dataclass(frozen=True)
class Norm:
    """A per-channel layer (batch/instance/group norm, PReLU with one weight per channel).

    Its weight, bias and running stats hold the group from ``offset`` on.
    """

    module: str
    offset: int = 0


@dataclass(frozen=True)
class Site:
    """A module whose output tensor carries the group from channel ``offset``.

    ``call`` counts the module's calls in one eval forward (a ReLU reused twice
    in a block has calls 0 and 1); ``activation`` marks post-activation
    outputs, the usual place to hook feature maps for HRank or Taylor scores.
    """

    module: str
    offset: int = 0
    call: int = 0
    activation: bool = False


@dataclass
class ChannelGroup:
    """Channels that must be pruned together: one mask for all members.

    ``size`` is the current number of channels; a pruned width must be a
    multiple of ``divisor`` (GroupNorm's ``num_groups`` combined with
    ``round_to``) and at least ``divisor``. ``reason`` says why a group is not
    ``prunable``. ``sites`` are listed post-activation first.
    """

    id: int
    size: int
    prunable: bool = True
    reason: str = ""
    divisor: int = 1
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    norms: list[Norm] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)

    def modules(self) -> list[str]:
        """Paths of every layer that holds some of this group's weights."""
        seen = [m.module for m in (*self.producers, *self.norms, *self.consumers)]
        return list(dict.fromkeys(seen))

    @property
    def key(self) -> str:
        """A name that survives surgeries and re-traces (ids do not): its producer layers."""
        return "+".join(sorted({p.module for p in self.producers}))

    def describe(self) -> str:
        """A short label for messages: id, width and the first layer."""
        first = self.modules()[0] if self.modules() else "no layer"
        return f"group {self.id} ({self.size} channels, e.g. {first!r})"


# ----------------------------------------------------------------------------- the graph


class DependencyGraph:
    """Channel groups of ``model`` traced on ``example_input``.

    ``ignored`` modules (paths or module objects; a container covers its
    children) keep all their channels. ``round_to`` makes pruned widths
    multiples of it (e.g. 8 for fast kernels). After a surgery the graph is
    stale: call :meth:`rebuild` (group ids may change).

    Attributes: ``groups`` (all groups with at least one layer), ``notes``
    (ops that were skipped and what was left unpruned because of them),
    ``idle`` (modules whose parameters never ran in the traced forwards).
    """

    def __init__(self, model: nn.Module, example_input: ExampleInput,
                 ignored: Iterable[Union[str, nn.Module]] = (), round_to: int = 1):
        if round_to < 1:
            raise PruningError(f"round_to must be a positive int, got {round_to!r}")
        self.model = model
        self.example_input = _as_inputs(example_input)
        self.ignored = resolve_ignored(model, ignored)
        self.round_to = int(round_to)
        self.groups: list[ChannelGroup] = []
        self.notes: list[str] = []
        self.idle: list[str] = []
        self.stale = False
        self.rebuild()

    def rebuild(self) -> "DependencyGraph":
        """Trace the model again (after a surgery); returns ``self``."""
        if getattr(self.model, MASK_ATTR, 0):
            raise PruningError("the model has channel masks applied: remove them "
                               "(handle.remove()) before tracing it")
        analysis = _Analysis(self.model)
        analysis.trace(self.example_input, training=False)
        idle = _idle_modules(self.model, analysis.used)
        if idle:
            self._trace_training(analysis, idle)
            idle = _idle_modules(self.model, analysis.used)
        if idle:
            analysis.notes.append(f"modules never run in eval or training forward, left as "
                                  f"they are: {', '.join(idle[:5])}")
        self.idle = idle
        self.groups = analysis.groups(self.round_to, self.ignored)
        self.notes = analysis.notes
        self.stale = False
        return self

    def _trace_training(self, analysis: "_Analysis", idle: list[str]) -> None:
        """Modules idle in eval (deep-supervision heads) run in training: trace that too."""
        inputs = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in self.example_input)
        try:
            analysis.trace(inputs, training=True)
        except PruningError as err:
            analysis.refuse_all(f"modules {', '.join(idle[:3])} run only in training and the "
                                f"training-mode trace failed")
            analysis.notes.append(f"nothing is prunable: {err}")

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> ChannelGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise PruningError(f"no channel group {gid}; the graph has groups "
                           f"0..{len(self.groups) - 1}")

    def __repr__(self) -> str:
        return (f"DependencyGraph({type(self.model).__name__}: {len(self.groups)} groups, "
                f"{len(self.prunable_groups())} prunable, {len(self.notes)} notes)")


def _as_inputs(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise PruningError("example_input must be a tensor or a sequence of tensors")
    return inputs


def resolve_ignored(model: nn.Module, ignored: Iterable[Union[str, nn.Module]]) -> list[str]:
    """Module paths of ``ignored`` (paths or module objects); PruningError for one not in the model."""
    names = {id(m): n for n, m in model.named_modules()}
    paths = []
    for item in ignored:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise PruningError(f"ignored module {type(item).__name__} is not part of the model")
            paths.append(names[id(item)])
        else:
            try:
                model.get_submodule(item)
            except AttributeError:
                raise PruningError(f"ignored module {item!r} is not in the model{close_names(model, item)}") from None
            paths.append(item)
    return paths


def hook_sites(model: nn.Module, members: Iterable[tuple[Any, Site]], on_output) -> list:
    """Forward hooks calling ``on_output(item, site, out, module)`` at each member's site.

    ``members`` pairs anything (a group, an index) with the :class:`Site` where
    its channels appear; a module called several times in one forward is
    matched on ``Site.call`` (the count restarts at every forward of
    ``model``). ``on_output`` may return a replacement for ``out`` (channel
    scaling multiplies it), or None to leave it. Returns the handles, to
    ``remove()`` when done. Criteria, Sauron and channel scaling all observe
    channels this one way.
    """
    by_module: dict[str, list[tuple[Any, Site]]] = {}
    for item, site in members:
        by_module.setdefault(site.module, []).append((item, site))
    calls: dict[str, int] = {}
    handles = [model.register_forward_pre_hook(lambda m, a: calls.clear())]
    try:
        for path, at_module in by_module.items():
            hook = _site_hook(path, at_module, calls, on_output)
            handles.append(model.get_submodule(path).register_forward_hook(hook))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def _site_hook(path: str, members: list[tuple[Any, Site]], calls: dict[str, int], on_output):
    def hook(module: nn.Module, args: Any, out: Any):
        call = calls.get(path, 0)
        calls[path] = call + 1
        if not torch.is_tensor(out):
            return None
        result = out
        for item, site in members:
            if site.call == call:
                replaced = on_output(item, site, result, module)
                result = result if replaced is None else replaced
        return None if result is out else result
    return hook


def close_names(model: nn.Module, path: str) -> str:
    """A '; did you mean ...?' hint for a module path that is not in ``model`` ('' when none is close)."""
    close = difflib.get_close_matches(path, sorted(n for n, _ in model.named_modules()), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _idle_modules(model: nn.Module, used: set[str]) -> list[str]:
    idle = {n.rpartition(".")[0] for n, _ in model.named_parameters() if n not in used}
    return sorted(idle)


@dataclass
class _Raw:
    """A group while the walk is under way (a union-find node)."""

    size: int
    reasons: list[str] = field(default_factory=list)
    divisor: int = 1
    sites: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- analysis


class _Analysis:
    """Union-find store of groups plus the walk over one or more traces."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.parent: dict[int, int] = {}
        self.raw: dict[int, _Raw] = {}
        self.producer_of: dict[str, int] = {}
        self.members: dict[tuple[str, str], tuple] = {}  # (module, axis) -> segments
        self.used: set[str] = set()
        self.notes: list[str] = []

    # -- union-find
    def new(self, size: int, reason: str = "") -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.raw[gid] = _Raw(size, [reason] if reason else [])
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.raw[a].size != self.raw[b].size:  # callers check; kept as a guard
            self.refuse([a, b], "coupled with a group of another width")
            return a
        a, b = min(a, b), max(a, b)
        self.parent[b] = a
        ra, rb = self.raw[a], self.raw.pop(b)
        ra.reasons += [r for r in rb.reasons if r not in ra.reasons]
        ra.divisor = math.lcm(ra.divisor, rb.divisor)
        ra.sites.update(rb.sites)
        return a

    def size(self, gid: int) -> int:
        return self.raw[self.find(gid)].size

    def refuse(self, gids: Iterable[int], reason: str) -> None:
        for gid in gids:
            raw = self.raw[self.find(gid)]
            if reason not in raw.reasons:
                raw.reasons.append(reason)

    def refuse_all(self, reason: str) -> None:
        self.refuse(list(self.raw), reason)

    # -- layouts
    def width(self, layout: Layout) -> int:
        return sum(self.size(g) * f for g, f in layout)

    def merge(self, layouts: list[Layout], where: str) -> Layout:
        """Tensors combined element-wise: segment i of each is the same channels."""
        first = layouts[0]
        shape = [(self.size(g), f) for g, f in first]
        for other in layouts[1:]:
            if [(self.size(g), f) for g, f in other] != shape:
                self.refuse([g for lay in layouts for g, _ in lay],
                            f"combined with differently concatenated channels at {where}")
                return first
        for other in layouts[1:]:
            for (a, _), (b, _) in zip(first, other):
                self.union(a, b)
        return first

    def register(self, module: str, axis: str, layout: Layout) -> None:
        """Record that ``module``'s ``axis`` holds ``layout``; calls must agree."""
        segments, offset = [], 0
        for gid, factor in layout:
            segments.append((offset, gid, factor))
            offset += self.size(gid) * factor
        key = (module, axis)
        old = self.members.get(key)
        if old is None:
            self.members[key] = tuple(segments)
            return
        shape = [(o, self.size(g), f) for o, g, f in old]
        if shape != [(o, self.size(g), f) for o, g, f in segments]:
            self.refuse([g for _, g, _ in (*old, *segments)],
                        f"module {module!r} sees differently made channels in two calls")
            return
        for (_, a, _), (_, b, _) in zip(old, segments):
            self.union(a, b)

    def producer_group(self, module: str, size: int) -> int:
        """One group per producing layer, however often it is called."""
        if module not in self.producer_of:
            self.producer_of[module] = self.new(size)
        return self.find(self.producer_of[module])

    def trace(self, inputs: tuple[torch.Tensor, ...], training: bool) -> None:
        program = _export(self.model, inputs, training)
        _Walk(self, program, record_sites=not training).run()

    # -- result
    def groups(self, round_to: int, ignored: list[str]) -> list[ChannelGroup]:
        built: dict[int, ChannelGroup] = {}
        for (module, axis), segments in self.members.items():
            for offset, gid, factor in segments:
                root = self.find(gid)
                if root not in built:
                    raw = self.raw[root]
                    built[root] = ChannelGroup(id=-1, size=raw.size,
                                               divisor=math.lcm(raw.divisor, round_to))
                _add_member(built[root], self.model, module, axis, offset, factor)
        ordered = [built[r] for r in sorted(built)]
        for gid, (root, group) in enumerate(sorted(built.items())):
            group.id = gid
            self._finish(group, self.raw[root], ignored)
        return ordered

    def _finish(self, group: ChannelGroup, raw: _Raw, ignored: list[str]) -> None:
        reasons = list(raw.reasons)
        for path in group.modules():
            hit = [p for p in ignored if path == p or path.startswith(p + ".") or p == ""]
            if hit:
                reasons.append(f"module {path!r} is ignored")
                break
        if not reasons and group.size <= group.divisor:
            reasons.append(f"only {group.size} channels, and at least {group.divisor} must stay")
        group.prunable = not reasons
        group.reason = "; ".join(reasons)
        group.sites = sorted(raw.sites, key=lambda s: not s.activation)


def _add_member(group: ChannelGroup, model: nn.Module, module: str, axis: str,
                offset: int, factor: int) -> None:
    layer = model.get_submodule(module)
    transposed = isinstance(layer, _ConvNd) and layer.transposed
    if axis == "out":
        group.producers.append(Producer(module, dim=1 if transposed else 0, offset=offset))
    elif axis == "in":
        group.consumers.append(Consumer(module, dim=0 if transposed else 1, offset=offset,
                                        factor=factor))
    elif isinstance(layer, _ConvNd):
        group.producers.append(Producer(module, dim=0, offset=offset, depthwise=True))
    else:
        group.norms.append(Norm(module, offset=offset))


def _export(model: nn.Module, inputs: tuple, training: bool):
    """torch.export in the wanted mode, leaving the model exactly as it was."""
    saved = _snapshot(model)
    model.train(training)
    try:
        with warnings.catch_warnings():  # we undo those assignments ourselves
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            return torch.export.export(model, inputs, strict=False)
    except Exception as err:  # the exporter raises many types; the message is what matters
        text = " ".join(str(err).split())[:600]
        mode = "training" if training else "eval"
        raise PruningError(f"cannot trace {type(model).__name__} ({mode} mode) with "
                           f"torch.export, so its channels cannot be analysed: "
                           f"{type(err).__name__}: {text}") from err
    finally:
        _restore(saved)


def _snapshot(model: nn.Module) -> list:
    """Every module's attributes, and the contents of its lists and dicts.

    Non-strict export swaps module attributes while tracing and puts back
    copies: MONAI's DynUNet then writes its heads into one list and reads
    another, silently returning stale outputs. Restoring by identity avoids it.
    """
    saved = []
    for module in model.modules():
        attrs = dict(module.__dict__)
        contents = {k: copy.copy(v) for k, v in attrs.items() if type(v) in (list, dict)}
        saved.append((module, attrs, contents))
    return saved


def _restore(saved: list) -> None:
    for module, attrs, contents in saved:
        module.__dict__.clear()
        module.__dict__.update(attrs)
        for key, items in contents.items():
            target = attrs[key]
            target.clear()
            target.extend(items) if isinstance(target, list) else target.update(items)


# ----------------------------------------------------------------------------- the walk

UNARY = {
    # activations (in-place forms end in "_", stripped before lookup)
    "relu", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardtanh", "hardswish", "hardsigmoid", "relu6", "softplus", "softsign", "log_sigmoid",
    "threshold", "rrelu",
    # element-wise maths with scalars
    "abs", "neg", "exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "sign", "sin", "cos",
    "erf", "floor", "ceil", "round", "trunc", "frac", "nan_to_num", "fill", "zero",
    # copies, casts and views that keep the shape
    "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "to", "_to_copy", "type_as",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    # dropout, pooling, resizing, padding: per channel
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d",
    "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
    "replication_pad1d", "replication_pad2d", "replication_pad3d", "_pad_circular",
    "grid_sampler", "grid_sampler_2d", "grid_sampler_3d", "roll", "flip", "max_unpool2d",
    "max_unpool3d",
}
# new tensors whose values do not come from their tensor argument (x.new_zeros(...))
CREATION = {"new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones", "empty", "full",
            "arange", "rand", "randn", "randint", "scalar_tensor", "empty_strided", "eye"}
ACTIVATIONS = {"relu", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
               "tanh", "hardtanh", "hardswish", "hardsigmoid", "relu6", "softplus", "prelu",
               "_prelu_kernel", "rrelu", "log_sigmoid"}
BINARY = {"add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "maximum", "minimum",
          "fmax", "fmin", "pow", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "clamp",
          "clamp_min", "clamp_max", "fmod", "remainder", "hypot", "atan2", "eq", "ne", "lt",
          "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not",
          "bitwise_and", "bitwise_or", "bitwise_xor", "copy", "xlogy"}
RESHAPE = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
           "expand", "view_as", "reshape_as", "expand_as", "repeat"}
NORMS = {"batch_norm", "instance_norm", "group_norm", "native_batch_norm",
         "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
         "native_group_norm", "cudnn_batch_norm", "miopen_batch_norm"}
CONVS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
         "conv_transpose2d", "conv_transpose3d"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean",
          "logsumexp", "norm", "prod", "argmax", "argmin"}
SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}
SPLITS = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split",
          "unsafe_split_with_sizes", "unsafe_chunk"}


def _op_name(node: fx.Node) -> str:
    """The ATen op's base name, without overload and in-place underscore (relu_ -> relu)."""
    if node.target is operator.getitem:
        return "getitem"
    packet = getattr(node.target, "_overloadpacket", None)
    name = packet.__name__ if packet is not None else getattr(node.target, "__name__", "")
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _val(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, fx.Node) else None


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _args(node: fx.Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    out = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def _tensor_nodes(value: Any) -> list[fx.Node]:
    leaves = torch.utils._pytree.tree_leaves(value)
    return [x for x in leaves if isinstance(x, fx.Node) and _is_tensor(_val(x))]


class _Walk:
    """One pass over an exported graph, giving every tensor node its layout."""

    def __init__(self, analysis: _Analysis, program, record_sites: bool):
        self.a = analysis
        self.program = program
        self.record_sites = record_sites
        self.layout: dict[fx.Node, Any] = {}
        self.param: dict[fx.Node, str] = {}
        self.calls: dict[str, list[str]] = {}
        self.last_in_call: dict[str, fx.Node] = {}

    # -- driver
    def run(self) -> None:
        self._placeholders()
        graph = self.program.graph
        for node in graph.nodes:
            if node.op == "call_function":
                self._call(node)
                self._note_call(node)
            elif node.op == "output":
                self._outputs(node)
        self._dead_ends(graph)
        if self.record_sites:
            self._sites()

    def _placeholders(self) -> None:
        from torch.export.graph_signature import InputKind

        by_name = {n.name: n for n in self.program.graph.nodes if n.op == "placeholder"}
        for spec in self.program.graph_signature.input_specs:
            node = by_name.get(spec.arg.name)
            if node is None:
                continue
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                self.param[node] = spec.target
                if node.users:  # export lists every parameter, used or not
                    self.a.used.add(spec.target)
            elif spec.kind == InputKind.USER_INPUT and _is_tensor(_val(node)):
                self._set(node, self._pseudo(_val(node), "image input channels"))

    def _call(self, node: fx.Node) -> None:
        value = _val(node)
        if not (_is_tensor(value) or isinstance(value, (list, tuple))):
            return
        op = _op_name(node)
        handler = self._handler(op)
        layout = handler(node) if handler else self._unknown(node, op)
        self._set(node, layout)

    def _handler(self, op: str):
        table = [(UNARY, self._unary), (BINARY, self._binary), (RESHAPE, self._reshape),
                 (NORMS, self._norm), (CONVS, self._conv), (REDUCE, self._reduce),
                 (SOFTMAX, self._softmax), (SPLITS, self._split)]
        for names, handler in table:
            if op in names:
                return handler
        if op.startswith(("upsample_", "_upsample_")):
            return self._unary
        if op in CREATION:
            return lambda node: None  # becomes a non-prunable pseudo group
        return {"getitem": self._getitem, "cat": self._cat, "concat": self._cat,
                "concatenate": self._cat, "stack": self._stack, "linear": self._linear,
                "prelu": self._prelu, "_prelu_kernel": self._prelu, "slice": self._slice,
                "narrow": self._slice, "select": self._select,
                "index_select": self._index_select, "permute": self._permute,
                "transpose": self._transpose, "layer_norm": self._layer_norm}.get(op)

    def _set(self, node: fx.Node, layout: Any) -> None:
        """Store a layout after checking its width against the observed shape."""
        value = _val(node)
        if isinstance(value, (list, tuple)):
            items = layout if isinstance(layout, (list, tuple)) and len(layout) == len(value) \
                and not _is_layout(layout) else [None] * len(value)
            self.layout[node] = tuple(self._checked(node, v, lay) for v, lay in zip(value, items))
        else:
            self.layout[node] = self._checked(node, value, layout)

    def _checked(self, node: fx.Node, value: Any, layout: Any) -> Any:
        if not _is_tensor(value) or value.dim() < 2:
            return None
        if layout is None:
            return self._pseudo(value, f"made by aten.{_op_name(node)} without tracked channels")
        if self.a.width(layout) != value.shape[1]:
            where = self._where(node)
            self.a.refuse([g for g, _ in layout], f"width mismatch after aten.{_op_name(node)}")
            self.a.notes.append(f"skipped aten.{_op_name(node)} at {where}: its output has "
                                f"{value.shape[1]} channels where {self.a.width(layout)} were "
                                f"expected; the channels involved are left unpruned")
            return self._pseudo(value, f"output of aten.{_op_name(node)} at {where}")
        return layout

    def _pseudo(self, value: torch.Tensor, reason: str) -> Layout:
        """A non-prunable group for channels no layer owns (inputs, constants, unknown ops)."""
        return ((self.a.new(int(value.shape[1]), reason), 1),)

    def _in(self, node: Any) -> Any:
        """The layout of an argument (None for weights, scalars, untracked tensors)."""
        return self.layout.get(node) if isinstance(node, fx.Node) else None

    def _where(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "the model's own forward"
        path, cls = list(stack.values())[-1]
        name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        return f"module {path or '<root>'!r} ({name})"

    # -- handlers: pass-through and element-wise
    def _unary(self, node: fx.Node) -> Any:
        inputs = _tensor_nodes(node.args[:1])
        layout = self._in(inputs[0]) if inputs else None
        value = _val(node)
        if isinstance(value, (list, tuple)):  # max_pool with indices, native_dropout
            return tuple(layout for _ in value)
        return layout

    def _binary(self, node: fx.Node) -> Any:
        out = _val(node)
        if out.dim() < 2:
            return None
        channels, aligned = out.shape[1], []
        for arg in _tensor_nodes((node.args, node.kwargs)):
            value = _val(arg)
            idx = 1 - (out.dim() - value.dim())
            if idx < 0 or value.shape[idx] != channels:
                continue  # broadcast over channels: pass-through
            layout = self._in(arg) if idx == 1 else None
            if layout is None:
                layout = self._channelwise_constant(node, arg)
            aligned.append(layout)
        if not aligned:
            return None
        return self.a.merge(aligned, self._where(node))

    def _channelwise_constant(self, node: fx.Node, arg: fx.Node) -> Layout:
        """A parameter or constant with one value per channel: not sliced, so not pruned."""
        what = f"parameter {self.param[arg]!r}" if arg in self.param else "a constant tensor"
        where = self._where(node)
        self.a.notes.append(f"skipped aten.{_op_name(node)} at {where}: it combines channels "
                            f"with {what}, which the surgery does not slice; those channels "
                            f"are left unpruned")
        return self._pseudo(_val(node), f"combined with {what} at {where}")

    def _unknown(self, node: fx.Node, op: str) -> Any:
        """An op the walk does not know: refuse the channels it touches, note it."""
        touched = [self._in(n) for n in _tensor_nodes((node.args, node.kwargs))]
        groups = [g for lay in touched if _is_layout(lay) for g, _ in lay]
        if groups:
            where = self._where(node)
            self.a.refuse(groups, f"aten.{op} at {where} was skipped")
            self.a.notes.append(f"skipped aten.{op} at {where}: the analysis does not know how "
                                f"it treats channels, so the channels it touches are left unpruned")
        return None

    # -- handlers: layers
    def _conv(self, node: fx.Node) -> Any:
        a = _args(node)
        x, out = a["input"], _val(node)
        module = self._layer(node, a["weight"], a.get("bias"), _ConvNd)
        layout = self._in(x)
        if module is None or layout is None or any(f != 1 for _, f in layout):
            return self._unknown(node, _op_name(node))
        groups, c_in, c_out = int(a.get("groups", 1)), _val(x).shape[1], out.shape[1]
        if groups == 1:
            self.a.register(module, "in", layout)
            gid = self.a.producer_group(module, c_out)
            self.a.register(module, "out", ((gid, 1),))
            return ((gid, 1),)
        if groups == c_in == c_out:
            self.a.register(module, "chan", layout)  # depthwise: channel i -> channel i
            return layout
        reason = f"grouped convolution {module!r} (groups={groups})"
        self.a.refuse([g for g, _ in layout], reason)
        gid = self.a.producer_group(module, c_out)
        self.a.refuse([gid], reason)
        self.a.register(module, "in", layout)
        self.a.register(module, "out", ((gid, 1),))
        return ((gid, 1),)

    def _linear(self, node: fx.Node) -> Any:
        a = _args(node)
        x = a["input"]
        if _val(x).dim() != 2:
            return self._in(x)  # acts on the last dim; dim 1 passes through
        module = self._layer(node, a["weight"], a.get("bias"), nn.Linear)
        layout = self._in(x)
        if module is None or layout is None:
            return self._unknown(node, "linear")
        self.a.register(module, "in", layout)
        gid = self.a.producer_group(module, _val(node).shape[1])
        self.a.register(module, "out", ((gid, 1),))
        return ((gid, 1),)

    def _layer(self, node: fx.Node, weight: Any, bias: Any, kind: type) -> str | None:
        """The module path owning ``weight`` (and ``bias``), if it is a ``kind`` layer."""
        name = self.param.get(weight)
        if name is None or not name.endswith(".weight"):
            return None
        path = name[: -len(".weight")]
        if bias is not None and self.param.get(bias) != f"{path}.bias":
            return None
        layer = self.a.model.get_submodule(path)
        return path if isinstance(layer, kind) else None

    def _norm(self, node: fx.Node) -> Any:
        a = _args(node)
        x = a["input"]
        layout = self._in(x)
        value = _val(node)
        if layout is None or any(f != 1 for _, f in layout):
            return self._unknown(node, _op_name(node))
        tensors = [a.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
        tensors = [t for t in tensors if isinstance(t, fx.Node)]
        module = self._norm_module(node, tensors)
        if module is False:
            return self._unknown(node, _op_name(node))
        if module:
            self.a.register(module, "chan", layout)
        groups = a.get("num_groups", a.get("group"))
        if groups is not None:
            self._group_norm_divisor(node, layout, int(groups))
        if isinstance(value, (list, tuple)):
            return (layout,) + (None,) * (len(value) - 1)
        return layout

    def _norm_module(self, node: fx.Node, tensors: list[fx.Node]) -> str | None | bool:
        """The norm layer's path; None if it has no tensors and no layer; False if unknown."""
        names = [self.param.get(t) for t in tensors]
        if any(n is None for n in names):
            return False
        paths = {n.rpartition(".")[0] for n in names}
        if len(paths) > 1:
            return False
        if not paths:
            stack = node.meta.get("nn_module_stack") or {}
            paths = {list(stack.values())[-1][0]} if stack else set()
        path = paths.pop() if paths else None
        if path is None:
            return None
        layer = self.a.model.get_submodule(path)
        if isinstance(layer, (_NormBase, nn.GroupNorm)):
            return path
        return False if tensors else None

    def _group_norm_divisor(self, node: fx.Node, layout: Layout, groups: int) -> None:
        """GroupNorm needs a width divisible by num_groups: keep each part a multiple."""
        for gid, _ in layout:
            raw = self.a.raw[self.a.find(gid)]
            if raw.size % groups:
                self.a.refuse([gid], f"group norm at {self._where(node)} has {groups} groups "
                                     f"that do not divide these {raw.size} channels")
            else:
                raw.divisor = math.lcm(raw.divisor, groups)

    def _prelu(self, node: fx.Node) -> Any:
        x, weight = node.args[0], node.args[1]
        layout = self._in(x)
        if layout is None or _val(weight).numel() == 1:
            return layout
        name = self.param.get(weight)
        path = name.rpartition(".")[0] if name else None
        if path is None or not isinstance(self.a.model.get_submodule(path), nn.PReLU):
            return self._unknown(node, "prelu")
        self.a.register(path, "chan", layout)
        return layout

    def _layer_norm(self, node: fx.Node) -> Any:
        a = _args(node)
        x = a["input"]
        if len(a["normalized_shape"]) < _val(x).dim() - 1:
            return self._in(x)  # normalises trailing dims only
        return self._unknown(node, "layer_norm")

    # -- handlers: shape ops
    def _reshape(self, node: fx.Node) -> Any:
        x = node.args[0]
        layout, before, after = self._in(x), _val(x), _val(node)
        if layout is None:
            return None
        if after.dim() >= 2 and tuple(after.shape[:2]) == tuple(before.shape[:2]):
            return layout
        flat = after.dim() == 2 and before.dim() > 2 and after.shape[0] == before.shape[0]
        if flat and after.shape[1] == math.prod(before.shape[1:]):
            per = math.prod(before.shape[2:])
            return tuple((g, f * per) for g, f in layout)  # flatten: channel -> block of features
        return self._unknown(node, _op_name(node))

    def _permute(self, node: fx.Node) -> Any:
        dims = [d % _val(node).dim() for d in node.args[1]]
        if dims[:2] == [0, 1]:
            return self._in(node.args[0])
        return self._unknown(node, "permute")

    def _transpose(self, node: fx.Node) -> Any:
        n = _val(node).dim()
        if {node.args[1] % n, node.args[2] % n} & {0, 1}:
            return self._unknown(node, "transpose")
        return self._in(node.args[0])

    def _reduce(self, node: fx.Node) -> Any:
        a = _args(node)
        x = node.args[0]
        n = _val(x).dim()
        dims = a.get("dim")
        if dims is None or dims == []:
            dims = list(range(n))  # a full reduction
        dims = {d % n for d in ([dims] if isinstance(dims, int) else dims)}
        keep = bool(a.get("keepdim", False))
        if 1 in dims or (0 in dims and not keep):
            return self._unknown(node, _op_name(node))
        layout = self._in(x)
        value = _val(node)
        if isinstance(value, (list, tuple)):
            return tuple(layout for _ in value)
        return layout

    def _softmax(self, node: fx.Node) -> Any:
        x = node.args[0]
        if node.args[1] % _val(x).dim() == 1:
            return self._unknown(node, _op_name(node))
        return self._in(x)

    def _slice(self, node: fx.Node) -> Any:
        a = _args(node)
        x = node.args[0]
        n = _val(x).dim()
        if a["dim"] % n != 1:
            return self._in(x)
        if _op_name(node) == "narrow":
            start, step = a["start"], 1
        else:
            start, step = a.get("start") or 0, a.get("step", 1)
        start = start % _val(x).shape[1] if start < 0 else start
        return self._sub_layout(node, x, start, start + _val(node).shape[1], step)

    def _sub_layout(self, node: fx.Node, x: fx.Node, start: int, end: int, step: int = 1) -> Any:
        """Channels [start, end) of ``x``: fine if they are whole segments."""
        layout = self._in(x)
        if layout is None:
            return None
        picked, offset = [], 0
        for gid, factor in layout:
            width = self.a.size(gid) * factor
            lo, hi = offset, offset + width
            if start <= lo and hi <= end:
                picked.append((gid, factor))
            elif lo < end and start < hi:
                picked = None
                break
            offset = hi
        if step != 1 or picked is None:
            return self._unknown(node, _op_name(node))
        return tuple(picked)

    def _select(self, node: fx.Node) -> Any:
        x = node.args[0]
        if node.args[1] % _val(x).dim() >= 2:
            return self._in(x)
        return self._unknown(node, "select")

    def _index_select(self, node: fx.Node) -> Any:
        x = node.args[0]
        if node.args[1] % _val(x).dim() != 1:
            return self._in(x)
        return self._unknown(node, "index_select")

    def _split(self, node: fx.Node) -> Any:
        a = _args(node)
        x = node.args[0]
        n = _val(x).dim()
        dim = a.get("dim", 0) % n
        parts = _val(node)
        if dim != 1:
            if dim == 0 and _op_name(node) == "unbind":
                return self._unknown(node, "unbind")
            return tuple(self._in(x) for _ in parts)
        out, start = [], 0
        for part in parts:
            end = start + part.shape[1]
            out.append(self._sub_layout(node, x, start, end))
            start = end
        return tuple(out)

    def _getitem(self, node: fx.Node) -> Any:
        source, index = node.args
        layout = self.layout.get(source)
        if isinstance(layout, tuple) and not _is_layout(layout) and isinstance(index, int):
            return layout[index]
        return None

    def _cat(self, node: fx.Node) -> Any:
        a = _args(node)
        out = _val(node)
        dim = a.get("dim", 0) % out.dim()
        parts = [t for t in a["tensors"] if isinstance(t, fx.Node) and _val(t).numel() > 0]
        layouts = [self._in(t) or self._pseudo(_val(t), "concatenated untracked tensor")
                   for t in parts]
        if dim == 1:
            return tuple(seg for lay in layouts for seg in lay)
        return self.a.merge(layouts, self._where(node))

    def _stack(self, node: fx.Node) -> Any:
        a = _args(node)
        dim = a.get("dim", 0) % _val(node).dim()
        if dim < 2:
            return self._unknown(node, "stack")
        layouts = [self._in(t) for t in a["tensors"]]
        if any(lay is None for lay in layouts):
            return self._unknown(node, "stack")
        return self.a.merge(layouts, self._where(node))

    # -- outputs, dead ends, sites
    def _outputs(self, node: fx.Node) -> None:
        from torch.export.graph_signature import OutputKind

        user = {s.arg.name for s in self.program.graph_signature.output_specs
                if s.kind == OutputKind.USER_OUTPUT and hasattr(s.arg, "name")}
        for out in _tensor_nodes(node.args):
            if out.name in user:
                layout = self.layout.get(out)
                if _is_layout(layout):
                    self.a.refuse([g for g, _ in layout], "reaches the model output")

    def _dead_ends(self, graph: fx.Graph) -> None:
        """Computed but unused outputs (heads stored on the module) must keep their width."""
        for node in graph.nodes:
            if node.op != "call_function" or node.users:
                continue
            name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
            layout = self.layout.get(node)
            if _is_layout(layout) and not name.endswith("_"):
                self.a.refuse([g for g, _ in layout], f"its output at {self._where(node)} is "
                              f"unused in the trace (a side output, e.g. a deep-supervision head)")

    def _note_call(self, node: fx.Node) -> None:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack or not self.record_sites:
            return
        key, (path, _) = list(stack.items())[-1]
        calls = self.calls.setdefault(path, [])
        if key not in calls:
            calls.append(key)
        self.last_in_call[key] = node

    def _sites(self) -> None:
        for path, keys in self.calls.items():
            try:
                leaf = not any(True for _ in self.a.model.get_submodule(path).children())
            except AttributeError:
                leaf = False
            if not path or not leaf:
                continue  # leaf modules only: their output is their last op
            for call, key in enumerate(keys):
                node = self.last_in_call[key]
                layout = self.layout.get(node)
                if not _is_layout(layout) or any(f != 1 for _, f in layout):
                    continue
                act = _op_name(node) in ACTIVATIONS
                offset = 0
                for gid, _ in layout:
                    site = Site(path, offset=offset, call=call, activation=act)
                    self.a.raw[self.a.find(gid)].sites[site] = None
                    offset += self.a.size(gid)


def _is_layout(value: Any) -> bool:
    """A layout is a tuple of (int, int) segments; tuples of layouts are not."""
    return (isinstance(value, tuple) and len(value) > 0
            and all(isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], int) for s in value))
