"""Bringing your own classifier: the same network as a state dict for a builder or your own
class, as TorchScript, as a torch.export program and as ONNX (scored by onnxruntime), run through
the same scenario. Every file here is written by the real exporters from real networks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import arange
from arange.core.scenario import scenario_from_dict
from arange.errors import ArangeError
from arange.models.weights import map_state_keys

from .conftest import ROOT, tiny_scenario

# No random start: every format is attacked from the same point, so the numbers can agree.
ATTACKS = [{"name": "fgsm", "eps": ["8/255"]},
           {"name": "pgd", "eps": ["8/255"], "params": {"steps": 3, "random_start": False}}]

# A CIFAR ResNet-18 as most research code writes it (conv1/bn1, layerN, shortcut, linear),
# narrowed so the tests stay fast.
RESEARCH_RESNET = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin, layers = width, []
        for i, mult in enumerate((1, 2, 4, 8)):
            blocks = []
            for j in range(2):
                blocks.append(BasicBlock(cin, width * mult, 2 if i and not j else 1))
                cin = width * mult
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
'''


def export_all(net: nn.Module, folder: Path, stem: str, channels: int = 1, size: int = 32
               ) -> dict[str, Path]:
    """The network as TorchScript, torch.export and ONNX files (dynamic batch)."""
    net = net.eval()
    example = torch.rand(2, channels, size, size)
    out = {"torchscript": folder / f"{stem}.ts", "export": folder / f"{stem}.pt2",
           "onnx": folder / f"{stem}.onnx"}
    torch.jit.trace(net, example).save(str(out["torchscript"]))
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out["export"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(out["onnx"]), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    return out


def scenario(model: str, channels: int = 1, **target: Any) -> dict[str, Any]:
    s = tiny_scenario(attacks=ATTACKS, evaluation={"checks": {"large_eps": False,
                                                              "more_steps": False}})
    s["target"] = {"model": model, "samples": 48, "batch_size": 48,
                   "dataset": {"name": "digits", "options": {"channels": channels}}, **target}
    return s


def robust(card: Any) -> dict[str, float]:
    return {f"{r.attack}@{r.eps_label}": r.robust_accuracy for r in card.results}


@pytest.fixture(scope="module")
def trained(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny scenario's trained ResNet-20 exported to every format, and its registry run."""
    model, _, _ = tiny_model
    folder = tmp_path_factory.mktemp("trained")
    files = export_all(model.backbone, folder, "resnet20")
    prep = {"mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    reference = arange.run(scenario("resnet20", model_params={"width": 8}, weights="zoo",
                                    training={"epochs": 4}), out=folder / "registry",
                           progress=False)
    return {"files": files, "prep": prep, "reference": reference, "folder": folder}


@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
def test_every_format_scores_like_the_registry_model(trained: dict[str, Any], fmt: str) -> None:
    """The trained network exported to a deployment format, declared with its preprocessing,
    gives the registry run's robust accuracies (within one sample of 48)."""
    path = trained["files"][fmt]
    card = arange.run(scenario(f"{fmt}:{path}", preprocessing=trained["prep"]),
                      out=trained["folder"] / fmt, progress=False)
    ref = robust(trained["reference"])
    for key, value in robust(card).items():
        assert abs(value - ref[key]) <= 1 / 48 + 1e-9, (fmt, key, value, ref[key])
    assert card.provenance.model_info["format"] == fmt
    assert card.provenance.weights_sha256 != trained["reference"].provenance.weights_sha256
    assert card.check("above_chance").status == "pass"
    if fmt == "onnx":
        check = card.check("deployed_runtime")
        assert check.status == "pass", check.message
        assert all(r.deployed_agreement is not None and r.deployed_agreement >= 0.99
                   for r in card.results)
        assert card.provenance.model_info["runtime"].startswith("onnxruntime")
    else:
        assert all(r.deployed_agreement is None for r in card.results)


def test_onnx_verdicts_come_from_onnxruntime(trained: dict[str, Any]) -> None:
    """The adversarial predictions in samples.json are onnxruntime's on the original file."""
    import numpy as np
    import onnxruntime as ort

    out = trained["folder"] / "onnx-verdicts"
    card = arange.run(scenario(f"onnx:{trained['files']['onnx']}",
                               preprocessing=trained["prep"]), out=out, progress=False)
    samples = json.loads((out / "samples.json").read_text())
    session = ort.InferenceSession(str(trained["files"]["onnx"]))
    row = card.row("pgd", 8 / 255)
    examples = np.load(out / "examples" / f"{row.job_id}.npz")
    adv = examples["adv"].astype(np.float32) / 255
    mean = np.array(trained["prep"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(trained["prep"]["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    logits = session.run(None, {"image": (adv - mean) / std})[0]
    preds = samples["jobs"][row.job_id]["adv_pred"]
    assert [preds[i] for i in examples["index"]] == logits.argmax(1).tolist()


def test_a_divergent_onnx_file_is_flagged(trained: dict[str, Any], tiny_model: Any) -> None:
    """An ONNX file exported with its normalisation inside, scored with the same
    normalisation declared again: the model is at chance and the run says so."""
    model, _, _ = tiny_model
    path = trained["folder"] / "normalised-inside.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(2, 1, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {0: "n"}})
    card = arange.run(scenario(f"onnx:{path}", preprocessing=trained["prep"]),
                      out=trained["folder"] / "divergent", progress=False)
    check = card.check("above_chance")
    assert check.status == "fail" and "preprocessing" in check.message


def test_research_resnet_from_a_state_dict_class_and_every_format(
        tmp_path: Path) -> None:
    """A research-style ResNet-18 (linear/shortcut names) saved by DataParallel: loaded as your
    own class (with --trust-code), as TorchScript and as ONNX, the same numbers every way."""
    code = tmp_path / "resnet.py"
    code.write_text(RESEARCH_RESNET)
    spec = importlib.util.spec_from_file_location("research_resnet", code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the test builds the network the way its author would
    torch.manual_seed(0)
    net = module.ResNet18(num_classes=10, width=8).eval()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "ckpt.pth")
    files = export_all(net, tmp_path, "research", channels=3)
    cards = {}
    cards["python"] = arange.run(scenario(f"python:{code}:ResNet18", channels=3, weights=str(
        tmp_path / "ckpt.pth"), model_params={"width": 8}), out=tmp_path / "py",
        progress=False, trust_code=True)
    for fmt in ("torchscript", "onnx"):
        cards[fmt] = arange.run(scenario(f"{fmt}:{files[fmt]}", channels=3),
                                out=tmp_path / fmt, progress=False)
    info = cards["python"].provenance.model_info
    assert info["renamed_keys"].endswith("removed prefix 'module.'")
    ref = robust(cards["python"])
    for fmt, card in cards.items():
        for key, value in robust(card).items():
            assert abs(value - ref[key]) <= 1 / 48 + 1e-9, (fmt, key)
    # a random network is at chance: the run says its numbers mean nothing
    assert cards["python"].check("above_chance").status == "fail"


@pytest.mark.parametrize("model, params", [
    ("torchvision:mobilenet_v3_small", {"num_classes": 10}),
    ("timm:test_resnet", {"num_classes": 10}),
])
def test_builders_load_wrapped_checkpoints_and_report_the_renaming(
        tmp_path: Path, model: str, params: dict[str, Any]) -> None:
    kind, _, name = model.partition(":")
    if kind == "timm":
        import timm
        net = timm.create_model(name, pretrained=False, **params)
    else:
        import torchvision
        net = torchvision.models.get_model(name, weights=None, **params)
    from safetensors.torch import save_file
    save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    card = arange.run(scenario(model, channels=3, weights=str(tmp_path / "w.safetensors"),
                               model_params=params,
                               preprocessing={"mean": [0.5], "std": [0.25]}),
                      out=tmp_path / "run", progress=False)
    info = card.provenance.model_info
    assert info["format"] == kind and "removed prefix 'model.'" in info["renamed_keys"]
    assert info["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert {r.attack for r in card.results} == {"fgsm", "pgd"}
    if kind == "timm":
        assert "mean" in info["pretrained_cfg"]


def test_label_map_permuted_outputs_score_the_same(trained: dict[str, Any],
                                                   tiny_model: Any, tmp_path: Path) -> None:
    """A model whose outputs are in another order, with the map from the dataset's classes
    to them, scores exactly as the original."""
    model, _, _ = tiny_model
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])  # output perm[c] holds class c
    net = __import__("copy").deepcopy(model.backbone).eval()
    with torch.no_grad():
        w, b = net.fc.weight.clone(), net.fc.bias.clone()
        net.fc.weight[perm], net.fc.bias[perm] = w, b
    path = tmp_path / "permuted.ts"
    torch.jit.trace(net, torch.rand(2, 1, 32, 32)).save(str(path))
    (tmp_path / "labels.json").write_text(json.dumps({str(c): int(perm[c]) for c in range(10)}))
    card = arange.run(scenario(f"torchscript:{path}", preprocessing=trained["prep"],
                               labels=str(tmp_path / "labels.json")), out=tmp_path / "run",
                      progress=False)
    assert robust(card) == robust(arange.run(
        scenario(f"torchscript:{trained['files']['torchscript']}",
                 preprocessing=trained["prep"]), out=tmp_path / "plain", progress=False))


def test_bad_model_sources_fail_before_any_compute(trained: dict[str, Any],
                                                   tmp_path: Path) -> None:
    ts = str(trained["files"]["torchscript"])
    torch.save({}, tmp_path / "w.pth")
    cases = [
        (scenario("onnx:./missing.onnx"), ("target.model: onnx file ./missing.onnx does not "
         "exist")),
        (scenario("torchvision:resnet_18", weights=str(tmp_path / "w.pth")),
         ("target.model: torchvision has no "
         "classification model 'resnet_18'")),
        (scenario(f"torchscript:{ts}", weights=ts), "target.weights"),
        (scenario("torchvision:resnet18"), ("target.weights: torchvision:resnet18 needs a "
         "weights file")),
        (scenario("resnet20", preprocessing={"mean": [0.5], "std": [0.5]}),
         "target.preprocessing: registry model 'resnet20'"),
        (scenario(f"torchscript:{ts}", preprocessing={"mean": [0.5]}), ("give both mean and "
         "std")),
        (scenario("pickle:model.pkl"), "unknown model format 'pickle'"),
    ]
    for raw, message in cases:
        with pytest.raises(ArangeError, match=message.replace("(", r"\(").replace(".", r"\.")):
            scenario_from_dict(raw, "s.yaml", tmp_path)
    labels = scenario(f"torchscript:{ts}", preprocessing=trained["prep"],
                      labels={str(c): c + 5 for c in range(10)})
    with pytest.raises(ArangeError, match=r"indices outside the model's 10 outputs"):
        arange.run(scenario_from_dict(labels), out=tmp_path / "labels", progress=False)
    assert not (tmp_path / "labels" / "scorecard.json").exists()


def test_state_dict_keys_are_mapped_or_named() -> None:
    expected = ["conv.weight", "fc.weight", "fc.bias"]
    state = {f"module.model.{k}": torch.zeros(1) for k in expected}
    mapped, how = map_state_keys(state, expected)
    assert set(mapped) == set(expected) and how == "3 keys: removed prefix 'module.model.'"
    wrapped = [f"backbone.{k}" for k in expected]
    mapped, how = map_state_keys({k: torch.zeros(1) for k in expected}, wrapped)
    assert set(mapped) == set(wrapped) and how == "3 keys: added prefix 'backbone.'"
    mapped, how = map_state_keys({"other.weight": torch.zeros(1)}, expected)
    assert how is None


def test_user_code_runs_only_with_trust_code(tmp_path: Path) -> None:
    """Without --trust-code: exit 2 with the reason, and the file's code never runs."""
    marker = tmp_path / "ran"
    code = tmp_path / "net.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('x')\n" + RESEARCH_RESNET)
    raw = scenario(f"python:{code}:ResNet18", weights=str(tmp_path / "w.pth"))
    torch.save({}, tmp_path / "w.pth")
    (tmp_path / "s.yaml").write_text(json.dumps(raw))
    out = subprocess.run([sys.executable, "-m", "arange", "run", str(tmp_path / "s.yaml"),
                          "--out", str(tmp_path / "run"), "-q"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300, check=False)
    assert out.returncode == 2, out.stderr
    assert "--trust-code" in out.stderr and "runs your own Python code" in out.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()
    out = subprocess.run([sys.executable, "-m", "arange", "validate", str(tmp_path / "s.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert out.returncode == 0 and "--trust-code" in out.stdout, out.stdout + out.stderr
    assert not marker.exists()


def test_onnx_target_on_ray_gives_the_local_scorecard(trained: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """Ray workers load the same ONNX file (checked by its sha256) and score with onnxruntime
    as the driver does."""
    import yaml

    from arange.cli import main

    from .test_resume import _scrub

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario(f"onnx:{trained['files']['onnx']}",
                                            preprocessing=trained["prep"])))
    cards = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        assert main(["run", str(path), "--out", str(out), "-q", "--executor", executor]) == 0
        cards[executor] = json.loads((out / "scorecard.json").read_text())
    assert _scrub(cards["ray"]) == _scrub(cards["local"])
    assert cards["ray"]["results"][0]["deployed_agreement"] is not None


def test_timm_pretrained_config_gives_size_and_normalisation(tmp_path: Path) -> None:
    """A timm model and a scenario without preprocessing: the input size, resize and mean/std
    come from the model's pretrained config, and the data are decoded at that size."""
    import timm

    from arange.classification.target import prepare_target

    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    cfg = net.pretrained_cfg
    torch.save(net.state_dict(), tmp_path / "w.pt")
    raw = scenario("timm:test_resnet", channels=3, weights=str(tmp_path / "w.pt"),
                   model_params={"num_classes": 10}, samples=4)
    target = prepare_target(scenario_from_dict(raw), torch.device("cpu"), progress=False)
    prep = target.model_info["preprocessing"]
    assert target.data.x.shape[-2:] == tuple(cfg["input_size"][-2:])
    assert prep["crop"] == cfg["input_size"][-1] and prep["normalisation_from"] == \
        "timm pretrained_cfg"
    assert prep["mean"] == list(cfg["mean"])


def test_defenses_around_an_onnx_target_are_scored_by_the_runtime(trained: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """An input-transform defense wraps the deployed runtime for scoring and the twin for the
    attack (BPDA for the non-differentiable transform); a defense that retrains the target is
    refused for a brought model."""
    raw = scenario(f"onnx:{trained['files']['onnx']}", preprocessing=trained["prep"])
    raw["defenses"] = ["none", {"name": "bit_depth", "params": {"bits": 4}}]
    card = arange.run(raw, out=tmp_path / "run", progress=False)
    rows = [r for r in card.results if r.defense == "bit_depth"]
    assert rows and all(r.deployed_agreement is not None for r in rows)
    assert card.check("deployed_runtime").status in ("pass", "fail")
    assert "clean (bit_depth)" in card.check("deployed_runtime").details["agreement"]
    raw["defenses"] = ["none", "pgd_at"]
    with pytest.raises(ArangeError, match="pgd_at trains its own copy of a registry model"):
        scenario_from_dict(raw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_at_64px_agree_across_every_format(name: str, tmp_path: Path) -> None:
    """torchvision builders at 64 px: the builder with a state dict, TorchScript, torch.export
    and ONNX give the same robust accuracies (within one sample)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    files = export_all(net, tmp_path, name, channels=3, size=64)
    prep = {"resize": 64, "crop": 64, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}
    runs = {"builder": scenario(f"torchvision:{name}", channels=3, weights=str(
        tmp_path / "w.pth"), model_params={"num_classes": 10}, preprocessing=prep)}
    runs.update({fmt: scenario(f"{fmt}:{path}", channels=3, preprocessing=prep)
                 for fmt, path in files.items()})
    cards = {k: arange.run(v, out=tmp_path / k, progress=False) for k, v in runs.items()}
    ref = robust(cards["builder"])
    for fmt, card in cards.items():
        assert card.provenance.model_info["preprocessing"]["input_size"] == 64
        for key, value in robust(card).items():
            assert abs(value - ref[key]) <= 1 / 48 + 1e-9, (fmt, key, value, ref[key])
    assert cards["onnx"].check("deployed_runtime").status == "pass"
