"""``ensemble:<N>x<arch>``: parsing, the averaged forward, per-member training, checkpoint and ONNX round trips."""

import dataclasses

import pytest
import torch

from kdexport.errors import ConfigError, UnknownNameError
from kdexport.models.builders import ModelSpec, build_model, check_arch
from kdexport.models.ensemble import Ensemble, parse_ensemble


def test_parse_and_check():
    assert parse_ensemble("3xfastcifar:1.5") == (3, "fastcifar:1.5")
    assert parse_ensemble("2xresnet8x4") == (2, "resnet8x4")
    for bad in ("fastcifar", "1xfastcifar", "17xmlp:8", "x", "2xensemble:2xmlp:8"):
        with pytest.raises(ConfigError):
            parse_ensemble(bad)
    check_arch("ensemble:2xmlp:8")
    with pytest.raises(UnknownNameError):
        check_arch("ensemble:2xnosuchnet")


def test_forward_is_the_mean_of_the_members_logits():
    torch.manual_seed(0)
    m = build_model(ModelSpec("ensemble:3xmlp:8", 4, (1, 2, 3))).eval()
    assert isinstance(m, Ensemble) and len(m.members) == 3
    x = torch.randn(5, 1, 2, 3)
    by_hand = (m.members[0](x) + m.members[1](x) + m.members[2](x)) / 3
    torch.testing.assert_close(m(x), by_hand)
    assert not torch.allclose(m.members[0](x), m.members[1](x))  # independently initialized


def _tiny(digits, n=64):
    return dataclasses.replace(digits, x_train=digits.x_train[:n], y_train=digits.y_train[:n],
                               x_test=digits.x_test[:32], y_test=digits.y_test[:32])


def test_fit_trains_each_member_with_its_own_seed_and_state(digits, tmp_path):
    from kdexport.config import TrainConfig
    from kdexport.distill.train import fit, remove_training_state

    data = _tiny(digits)
    spec = ModelSpec("ensemble:2xmlp:16", 10, tuple(data.input_shape))
    cfg = TrainConfig(epochs=2, batch_size=16, seed=5)
    torch.manual_seed(0)
    ens = build_model(spec)
    hist = fit(ens, data, cfg, state_path=tmp_path / "teacher.pt")
    assert [(r["member"], r["epoch"]) for r in hist] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher-member1.pt", "teacher-member2.pt"]
    keep = tmp_path / "teacher-member1.json"
    keep.write_text("{}")
    # member k is exactly what fit makes of that member alone with seed + k
    for k in range(2):
        torch.manual_seed(0)
        alone = build_model(spec).members[k]
        fit(alone, data, dataclasses.replace(cfg, seed=cfg.seed + k))
        for a, b in zip(alone.state_dict().values(), ens.members[k].state_dict().values()):
            torch.testing.assert_close(a, b)
    # a resume finds both members finished and changes nothing
    before = {k: v.clone() for k, v in ens.state_dict().items()}
    again = fit(ens, data, cfg, state_path=tmp_path / "teacher.pt", resume=True)
    assert again == hist
    for k, v in ens.state_dict().items():
        torch.testing.assert_close(v, before[k])
    remove_training_state(tmp_path / "teacher.pt")  # a finished ensemble leaves no state behind
    assert [p.name for p in tmp_path.iterdir()] == [keep.name]


def test_checkpoint_and_onnx_round_trip(tmp_path):
    from kdexport.export.onnx import export_onnx
    from kdexport.models.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("ensemble:2xfastcifar:0.25", 10, (3, 32, 32))
    m = build_model(spec).eval()
    for member in m.members:
        member.data_init(torch.randn(64, 3, 32, 32))
    save_checkpoint(tmp_path / "t.pt", m, spec, role="teacher", config={})
    back, spec2, _ = load_model(tmp_path / "t.pt", expect=spec)
    assert spec2 == spec
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(back.eval()(x), m(x))
    res = export_onnx(m, tmp_path / "t.onnx", torch.randn(16, 3, 32, 32))
    assert res.top1_agreement == 1.0


def test_distill_export_with_an_ensemble_teacher_and_its_checkpoint_reused(tmp_path):
    import json

    from typer.testing import CliRunner

    from kdexport.cli import app

    runner = CliRunner()
    fast = ["--epochs", "1", "--bench-iters", "3", "--bench-batch", "8"]
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill-export", "--teacher", "ensemble:2xmlp:64", "--teacher-epochs", "2",
                              "--out", str(out), *fast])
    assert res.exit_code == 0, res.output
    assert "teacher 1/2 epoch 2:" in res.output and "teacher 2/2 epoch 1:" in res.output
    t = json.loads((out / "report.json").read_text())["models"]["teacher"]
    assert t["arch"] == "ensemble:2xmlp:64" and t["epochs"] == 2  # each member's epochs
    assert [(r["member"], r["epoch"]) for r in t["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert t["parity"]["top1_agreement"] == 1.0
    again = tmp_path / "again"
    res = runner.invoke(app, ["distill-export", "--teacher", "ensemble:2xmlp:64", "--teacher-checkpoint",
                              str(out / "checkpoints" / "teacher.pt"), "--out", str(again), *fast])
    assert res.exit_code == 0, res.output
    t2 = json.loads((again / "report.json").read_text())["models"]["teacher"]
    assert t2["accuracy_onnx"] == t["accuracy_onnx"]  # the same ensemble, not retrained
    res = runner.invoke(app, ["distill-export", "--teacher", "ensemble:2xnosuchnet", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nosuchnet" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_ensemble_command_combines_trained_checkpoints(tmp_path):
    from typer.testing import CliRunner

    from kdexport.cli import app
    from kdexport.models.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    paths = []
    for k, arch in enumerate(["mlp:8", "mlp:8", "mlp:9"]):
        spec = ModelSpec(arch, 4, (1, 2, 3))
        paths.append(save_checkpoint(tmp_path / f"m{k}.pt", build_model(spec), spec, role="teacher", config={},
                                     history=[{"epoch": 1, "seconds": 1.5 + k}]))
    runner = CliRunner()
    out = tmp_path / "ens.pt"
    res = runner.invoke(app, ["ensemble", str(paths[0]), str(paths[1]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "--teacher ensemble:2xmlp:8 --teacher-checkpoint" in res.output
    ens, spec, blob = load_model(out)
    assert spec.arch == "ensemble:2xmlp:8" and blob["config"]["ensemble_of"] == [str(p) for p in paths[:2]]
    assert [(r["member"], r["seconds"]) for r in blob["history"]] == [(1, 1.5), (2, 2.5)]  # training time kept
    x = torch.randn(5, 1, 2, 3)
    alone = [load_model(p)[0](x) for p in paths[:2]]
    torch.testing.assert_close(ens(x), (alone[0] + alone[1]) / 2)
    for args, words in ((["ensemble", str(paths[0]), str(paths[2]), "--out", str(tmp_path / "b.pt")], "mlp:9"),
                        (["ensemble", str(paths[0]), str(paths[1]), "--out", str(out)], "--overwrite"),
                        (["ensemble", str(paths[0]), "--out", str(tmp_path / "c.pt")], "2 to 16"),
                        (["ensemble", str(out), str(out), "--out", str(tmp_path / "d.pt")], "already an ensemble")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "b.pt").exists()
