"""examples/pytorch_train.py with tiny settings: it trains, and a run saved and
resumed mid-epoch ends with exactly the weights of a run that never stopped. Also:
the stubs and help() cover every argument of Loader."""

import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

import supervision
from conftest import REPO

EXAMPLE = REPO / "examples" / "pytorch_train.py"


def train(capsys, *args):
    """Run the example's main() in this interpreter (torch is imported once)."""
    spec = importlib.util.spec_from_file_location("pytorch_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_example_trains_saves_and_resumes_exactly(tmp_path, data, capsys):
    torch = pytest.importorskip("torch")
    shards = tmp_path / "shards80"
    supervision.build_shards(data["root"] / "synth" / "train", shards, size=80, workers=2)
    common = ["--shards", shards, "--stats", data["stats"], "--batch-size", "8", "--crop", "72",
              "--width", "0.0625", "--workers", "2", "--seed", "5"]
    # the statistics are of 48-pixel images; only their channel values are used here
    whole = train(capsys, *common, "--steps", "6", "--checkpoint", tmp_path / "whole.pt")
    assert "step 6 " in whole and "loss" in whole
    train(capsys, *common, "--steps", "3", "--checkpoint", tmp_path / "part.pt")
    resumed = train(capsys, *common, "--steps", "6", "--resume", tmp_path / "part.pt",
                    "--checkpoint", tmp_path / "part.pt")
    assert "resumed at step 3: epoch 0, batch 3" in resumed
    a = torch.load(tmp_path / "whole.pt", weights_only=False)
    b = torch.load(tmp_path / "part.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    assert a["loader"] == b["loader"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_stubs_and_help_cover_every_argument():
    params = [p for p in inspect.signature(supervision.Loader).parameters if p != "self"]
    stub = ast.parse((Path(supervision.__file__).parent / "_supervision.pyi").read_text())
    loader = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "Loader")
    init = next(n for n in loader.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    stubbed = [a.arg for a in init.args.args[1:] + init.args.kwonlyargs]
    assert stubbed == params
    doc = supervision.Loader.__doc__
    for p in params:
        assert f"  {p}" in doc or f" {p}," in doc, f"help(Loader) does not explain {p}"
    for fn in (supervision.build_shards, supervision.compute_stats):
        names = list(inspect.signature(fn).parameters)
        stub_fn = next(n for n in stub.body if isinstance(n, ast.FunctionDef)
                       and n.name == fn.__name__)
        assert [a.arg for a in stub_fn.args.args + stub_fn.args.kwonlyargs] == names
        for p in names:
            assert p in fn.__doc__, f"help({fn.__name__}) does not explain {p}"
