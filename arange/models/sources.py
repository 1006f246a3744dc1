"""Where the target classifier comes from: the spelling of ``target.model`` and its loaders.

=======================  ===================================================================
``resnet20``             a registry model (``arange list models``); weights: zoo or a file
``torchvision:NAME``     any torchvision classification builder; weights from a local file
``timm:NAME``            any timm model (``pip install "arange[timm]"``); weights from a file
``torchscript:PATH``     a TorchScript file (weights inside)
``export:PATH``          a ``torch.export`` program, ``.pt2`` (weights inside)
``onnx:PATH``            an ONNX file: every example is scored by onnxruntime on this very
                         file; attacks differentiate a torch twin converted from it
``python:PATH:CLASS``    a class in your own Python file: runs your code, so only with
                         ``arange run --trust-code``
=======================  ===================================================================

Nothing here unpickles: weights files load as safetensors or ``torch.load(weights_only=True)``;
TorchScript and ``torch.export`` archives through their own loaders; ONNX through onnx.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArangeError

# format prefix -> (what it is, holds its own weights)
FORMATS: dict[str, tuple[str, bool]] = {
    "torchvision": ("a torchvision classification builder", False),
    "timm": ("a timm model", False),
    "torchscript": ("a TorchScript file", True),
    "export": ("a torch.export program (.pt2)", True),
    "onnx": ("an ONNX file", True),
    "python": ("a class in a local Python file (needs --trust-code)", False),
}
FILE_FORMATS = ("torchscript", "export", "onnx", "python")


class ModelSourceError(ArangeError):
    """``target.model`` cannot be used as written (the message says why and what to do)."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``target.model``: ``kind`` is ``registry`` or a format prefix; ``name`` the
    registry name, builder or class; ``path`` the file (absolute) for file formats."""

    kind: str
    name: str
    path: str | None = None

    @property
    def registry(self) -> bool:
        return self.kind == "registry"

    @property
    def weights_inside(self) -> bool:
        return not self.registry and FORMATS[self.kind][1]

    @property
    def runs_code(self) -> bool:
        return self.kind == "python"

    def spelling(self) -> str:
        if self.registry:
            return self.name
        if self.kind == "python":
            return f"python:{self.path}:{self.name}"
        return f"{self.kind}:{self.path or self.name}"


def parse_model_source(spec: str, base_dir: Path | None = None) -> ModelSource:
    """Parse ``target.model``; file paths are made absolute relative to ``base_dir`` (the
    scenario's folder). Raises :class:`ModelSourceError`."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        return ModelSource("registry", spec)
    if kind not in FORMATS:
        raise ModelSourceError(
            f"unknown model format {kind!r} in {spec!r}; write a registry name (arange list "
            f"models) or one of: {', '.join(f'{k}:' for k in FORMATS)}")
    if not rest:
        raise ModelSourceError(f"{spec!r} names no {'file' if kind in FILE_FORMATS else 'model'}"
                               f" after '{kind}:'")
    if kind not in FILE_FORMATS:
        return ModelSource(kind, rest)
    name = ""
    if kind == "python":
        path_text, sep, name = rest.rpartition(":")
        if not sep or not path_text or not name.isidentifier():
            raise ModelSourceError(f"{spec!r}: write python:PATH:CLASS, e.g. "
                                   "python:./net.py:Net")
        rest = path_text
    path = Path(rest).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    path = path.resolve()
    if not path.is_file():
        raise ModelSourceError(f"{kind} file {rest} does not exist (paths are relative to the "
                               "scenario file)")
    return ModelSource(kind, name, str(path))


def check_model_source(src: ModelSource) -> None:
    """What can be checked without loading: the builder exists, the optional package is
    installed. Raises :class:`ModelSourceError`."""
    if src.kind == "torchvision":
        import torchvision
        names = torchvision.models.list_models(module=torchvision.models)
        if src.name not in names:
            from ..registry import suggest
            raise ModelSourceError(f"torchvision has no classification model {src.name!r}"
                                   f"{suggest(src.name, names)}")
    elif src.kind == "timm":
        timm = _optional("timm", "timm")
        if not timm.is_model(src.name):
            raise ModelSourceError(f"timm has no model {src.name!r} (timm.list_models() lists "
                                   "them)")
    elif src.kind == "onnx":
        _optional("onnx", "onnx")
        _optional("onnxruntime", "onnx")
        _optional("onnx2torch", "onnx")


def _optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelSourceError(f"{module} is not installed: pip install \"arange[{extra}]\""
                               ) from e


def file_sha256(path: str | Path) -> str:
    from .weights import weights_sha256
    return weights_sha256(path)


# ---------------------------------------------------------------------------- loading

@dataclass
class Loaded:
    """A loaded model: ``net`` takes the normalised input; ``runtime`` (ONNX only) is the
    deployed artifact that scores; ``info`` goes to the scorecard's provenance."""

    net: nn.Module
    sha256: str
    runtime: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


def load_model_source(src: ModelSource, params: dict[str, Any], weights: str | None,
                      trust_code: bool = False) -> Loaded:
    """Build or load the network of a non-registry source (``weights``: a state-dict file for
    formats that hold none)."""
    from .weights import load_state_mapped

    if src.weights_inside and weights is not None:
        raise ModelSourceError(f"{src.spelling()} holds its weights; remove target.weights")
    if src.kind == "python" and not trust_code:
        raise ModelSourceError(f"{src.spelling()} runs code from {src.path}; run with "
                               "--trust-code (arange.run(..., trust_code=True)) if you trust it")
    check_model_source(src)
    info: dict[str, Any] = {"format": src.kind, "source": src.spelling()}
    if src.kind == "torchscript":
        try:
            net = torch.jit.load(str(src.path), map_location="cpu")
        except Exception as e:
            raise ModelSourceError(f"{src.path}: not a TorchScript file ({_first(e)})") from e
        return Loaded(net.eval(), file_sha256(str(src.path)), info=info)
    if src.kind == "export":
        try:
            net = torch.export.load(str(src.path)).module()
        except Exception as e:
            raise ModelSourceError(f"{src.path}: not a torch.export program ({_first(e)})"
                                   ) from e
        return Loaded(_Exported(net), file_sha256(str(src.path)), info=info)
    if src.kind == "onnx":
        twin, runtime, onnx_info = load_onnx(str(src.path))
        return Loaded(twin, file_sha256(str(src.path)), runtime, {**info, **onnx_info})
    if src.kind == "torchvision":
        import torchvision
        net = torchvision.models.get_model(src.name, weights=None, **params)
    elif src.kind == "timm":
        net = _optional("timm", "timm").create_model(src.name, pretrained=False, **params)
        cfg = getattr(net, "pretrained_cfg", None) or {}
        info["pretrained_cfg"] = {k: cfg[k] for k in ("input_size", "mean", "std",
                                                      "interpolation", "crop_pct") if k in cfg}
    else:
        net = _user_class(src)(**params)
    if not isinstance(net, nn.Module):
        raise ModelSourceError(f"{src.spelling()} did not build an nn.Module")
    if weights is None:
        raise ModelSourceError(f"{src.spelling()} needs target.weights: a .safetensors, .pt "
                               "or .pth state dict (the zoo trains registry models only)")
    if weights == "random":
        info["note"] = "randomly initialised; for plumbing tests only"
        return Loaded(net.eval(), hashlib.sha256(b"random-init").hexdigest(), info=info)
    sha, renamed = load_state_mapped(net, weights)
    if renamed:
        info["renamed_keys"] = renamed
    return Loaded(net.eval(), sha, info=info)


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


class _Exported(nn.Module):
    """A ``torch.export`` module as an ordinary one (its graph module takes no ``.eval()``
    calls; the program was exported in the mode it was traced in)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module_ = module

    def train(self, mode: bool = True) -> _Exported:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module_(x)
        return out


def _user_class(src: ModelSource) -> Any:
    """Import ``src.path`` as a module (this runs the user's code) and return its class."""
    path = Path(str(src.path))
    module_name = f"arange_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelSourceError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ModelSourceError(f"{path}: importing it failed: {type(e).__name__}: {_first(e)}"
                               ) from e
    cls = getattr(module, src.name, None)
    if cls is None:
        raise ModelSourceError(f"{path} has no {src.name!r}")
    return cls


# ---------------------------------------------------------------------------- ONNX

def load_onnx(path: str) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(torch twin for gradients, onnxruntime module that scores, info)."""
    onnx = _optional("onnx", "onnx")
    ort = _optional("onnxruntime", "onnx")
    onnx2torch = _optional("onnx2torch", "onnx")
    try:
        model = onnx.load(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelSourceError(f"{path}: not a readable ONNX model ({_first(e)})") from e
    try:
        twin = convert_onnx(model)
    except Exception as e:
        raise ModelSourceError(f"{path}: onnx2torch cannot convert this model to torch for "
                               f"gradients ({type(e).__name__}: {_first(e)}); export it in "
                               "TorchScript or torch.export format instead") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelSourceError(f"{path}: the model takes {len(inputs)} inputs; an image "
                               "classifier takes one (a batch of images)")
    info = {"runtime": f"onnxruntime {ort.__version__}", "input": inputs[0].name,
            "input_shape": [d if isinstance(d, int) else str(d) for d in inputs[0].shape],
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=None),
            "converter": f"onnx2torch {getattr(onnx2torch, '__version__', '?')}"}
    return twin, OnnxRuntime(session), info


def convert_onnx(model: Any) -> nn.Module:
    """The torch twin of a loaded ONNX model (onnx2torch), after the graph rewrites it needs:
    shared weights and ``Constant`` nodes folded into initialisers, and ``SAME`` auto-padding
    spelled out as explicit pads."""
    onnx2torch = _optional("onnx2torch", "onnx")
    graph = explicit_pads(_fold_constants(_constants_as_initializers(
        _inline_identities(model))))
    return onnx2torch.convert(graph).eval()  # type: ignore[no-any-return]


def _fold_constants(model: Any) -> Any:
    """Nodes computed from initialisers only (a weight the network derives from its parameters
    at run time, such as a constrained convolution's) evaluated once, by onnx's reference
    evaluator, into initialisers: onnx2torch takes convolution weights from initialisers."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = copy.deepcopy(model)
    g = model.graph
    values = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        inputs = [i for i in node.input if i]
        if not inputs or not all(i in values for i in inputs) or node.domain not in ("", "ai.onnx"):
            keep.append(node)
            continue
        sub = helper.make_model(
            helper.make_graph([node], "fold", [], [
                helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                for o in node.output], [values[i] for i in inputs]),
            opset_imports=model.opset_import)
        try:
            outs = ReferenceEvaluator(sub).run(None, {})
        except Exception:  # noqa: BLE001 - leave what the evaluator cannot compute to onnx2torch
            keep.append(node)
            continue
        for name, v in zip(node.output, outs, strict=True):
            values[name] = numpy_helper.from_array(np.asarray(v), name)
            g.initializer.append(values[name])
    del g.node[:]
    g.node.extend(keep)
    return model


def _constants_as_initializers(model: Any) -> Any:
    """``Constant`` nodes (which some exporters emit and onnx2torch does not convert at every
    opset) as initialisers of the same name."""
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    keep = []
    for node in g.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            keep.append(node)
            continue
        a = node.attribute[0]
        if a.name == "value":
            arr = numpy_helper.to_array(a.t)
        elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = helper.get_attribute_value(a)
            arr = np.asarray(v, dtype=np.float32 if "float" in a.name else np.int64)
        else:
            keep.append(node)
            continue
        g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
    del g.node[:]
    g.node.extend(keep)
    return model


def explicit_pads(model: Any) -> Any:
    """``auto_pad: SAME_UPPER / SAME_LOWER`` on Conv and pooling nodes rewritten as the explicit
    ``pads`` the ONNX spec defines for the node's input size (from shape inference; onnx2torch
    converts only explicit pads). Nodes whose input size is not static are left as they are."""
    from onnx import helper, shape_inference

    model = copy.deepcopy(model)
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0
                           for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        mode = attrs.get("auto_pad")
        if mode is None or mode.s not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        size = shapes.get(node.input[0], [])[2:]
        if node.op_type == "Conv" and node.input[1] in inits:
            kernel = list(inits[node.input[1]].dims[2:])
        elif "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"].ints)
        else:
            continue
        if not size or 0 in size or len(size) != len(kernel):
            continue
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(kernel)
        dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
        begin, end = [], []
        for n, k, st, d in zip(size, kernel, strides, dil, strict=True):
            total = max((-(-n // st) - 1) * st + (k - 1) * d + 1 - n, 0)
            small = total // 2
            upper = mode.s == b"SAME_UPPER"  # the extra pixel goes at the end
            begin.append(small if upper else total - small)
            end.append(total - small if upper else small)
        node.attribute.remove(mode)
        if "pads" in attrs:
            node.attribute.remove(attrs["pads"])
        node.attribute.append(helper.make_attribute("pads", begin + end))
    return model


def _inline_identities(model: Any) -> Any:
    """The graph with ``Identity`` nodes folded away (exporters use them to share weights;
    onnx2torch expects weights as initialisers)."""
    model = copy.deepcopy(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            src = rename.get(node.input[0], node.input[0])
            if src in inits:
                t = copy.deepcopy(inits[src])
                t.name = node.output[0]
                g.initializer.append(t)
                inits[t.name] = t
            else:
                rename[node.output[0]] = src
            continue
        keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    return model


class OnnxRuntime(nn.Module):
    """The deployed ONNX artifact as a module: onnxruntime on the original file, batch by batch
    when the file fixes the batch size. Not differentiable: it scores, the twin is attacked."""

    def __init__(self, session: Any):
        super().__init__()
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().contiguous().numpy()
        step = self.fixed_batch or max(len(arr), 1)
        outs = [self.session.run(None, {self.input_name: arr[i:i + step]})[0]
                for i in range(0, len(arr), step)]
        out = np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)
        return torch.from_numpy(out).to(x.device)

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxRuntime:
        return self  # one session per file; defenses wrap it, they never change it
