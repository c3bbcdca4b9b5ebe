"""Every command through Typer's CliRunner, including broken input and the attack -> eval round trip."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recapfast.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    res = run("train", synth_dir, "--out", out, "--iters", 6, "--val-every", 3, "--batch-size", 8,
              "--widths", "4,4,8,8,8", "--lr", "3e-3", "--quiet", "--device", "cpu")
    assert res.exit_code == 0, res.output
    return out


def test_help_and_no_args():
    assert run("--help").exit_code == 0
    for cmd in ("synth", "train", "eval", "attack", "demo"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output


def test_synth_writes_and_refuses_to_overwrite(tmp_path):
    res = run("synth", tmp_path / "s", "--count", 3, "--seed", 5, "--quiet", "--workers", 1)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "s" / "original").glob("*.png"))) == 3
    assert len(list((tmp_path / "s" / "recaptured").glob("*.png"))) == 3
    assert (tmp_path / "s" / "manifest.json").is_file()
    res = run("synth", tmp_path / "s", "--count", 3, "--quiet")
    assert res.exit_code == 1 and "error" in res.output


def test_train_resume_and_refusal(ckpt, synth_dir):
    assert ckpt.is_file() and ckpt.with_suffix(".json").is_file()
    cfg = json.loads(ckpt.with_suffix(".json").read_text())
    assert cfg["model"]["widths"] == [4, 4, 8, 8, 8] and cfg["training"]["iters"] == 6
    assert len(cfg["data"]["manifest_sha256"]) == 64
    res = run("train", synth_dir, "--out", ckpt, "--iters", 6, "--widths", "4,4,8,8,8", "--quiet")
    assert res.exit_code == 1 and "exists already" in res.output


def test_eval_on_hostile_folder(ckpt, hostile_dir, tmp_path):
    out_json = tmp_path / "r.json"
    res = run("eval", hostile_dir, "--eps", "1,2,3,4,5", "--model", ckpt, "--json", out_json, "--csv",
              tmp_path / "r.csv", "--batch-size", 16, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "Clean accuracy:" in res.output and "| FGSM |" in res.output and "| LLCM |" in res.output
    assert "corrupt.png" in res.output and "notes.png" in res.output
    data = json.loads(out_json.read_text())
    assert data["files"] == 48 + 3  # the synthetic files + grey, RGBA and odd JPEG
    assert sorted(e["path"].rsplit("/", 1)[1] for e in data["errors"]) == ["corrupt.png", "notes.png"]
    assert f"{100 * data['clean_accuracy']:.1f}%" in res.output
    for cell in data["cells"]:
        assert f"{100 * cell['accuracy']:.1f}%" in res.output
    notes = {n["path"].rsplit("/", 1)[1]: n["notes"] for n in data["notes"]}
    assert "alpha dropped" in notes["rgba.png"] and "grey replicated to RGB" in notes["grey.png"]
    # never overwrite without --force
    res = run("eval", hostile_dir, "--model", ckpt, "--json", out_json, "--quiet")
    assert res.exit_code == 1 and "--force" in res.output


def test_attack_then_clean_eval_reproduces_the_eval_number(ckpt, synth_dir, tmp_path):
    res = run("eval", synth_dir, "--eps", "1,2,3", "--model", ckpt, "--json", tmp_path / "e.json", "--quiet")
    assert res.exit_code == 0, res.output
    reported = json.loads((tmp_path / "e.json").read_text())
    for attack in ("fgsm", "llcm"):
        adv = tmp_path / f"adv_{attack}"
        res = run("attack", synth_dir, "--out", adv, "--attack", attack, "--eps", 2, "--model", ckpt, "--quiet")
        assert res.exit_code == 0, res.output
        manifest = json.loads((adv / "manifest.json").read_text())
        assert manifest["files"] == 48 and len(list(adv.rglob("*.png"))) == 48
        res = run("eval", adv, "--eps", "1", "--attack", "fgsm", "--model", ckpt, "--json", tmp_path / f"{attack}.json",
                  "--quiet")
        assert res.exit_code == 0, res.output
        again = json.loads((tmp_path / f"{attack}.json").read_text())
        cell = next(c for c in reported["cells"] if c["attack"] == attack and c["eps"] == 2)
        assert again["clean_accuracy"] == cell["accuracy"]
        assert manifest["adversarial_accuracy"] == cell["accuracy"]
    res = run("attack", synth_dir, "--out", tmp_path / "adv_fgsm", "--model", ckpt, "--quiet")
    assert res.exit_code == 1 and "not empty" in res.output


def test_user_errors_exit_1_with_one_line(ckpt, synth_dir, tmp_path):
    cases = [
        ("eval", synth_dir, "--eps", "one,two"),
        ("eval", synth_dir, "--attack", "cw"),          # pgd is a valid attack since issue 6
        ("eval", synth_dir, "--model", tmp_path / "missing.safetensors"),
        ("eval", tmp_path / "nowhere"),
        ("eval", tmp_path),
        ("--backend", "cuda-magic", "eval", synth_dir),
        ("train", synth_dir, "--out", tmp_path / "x.pt", "--iters", 1),
    ]
    for args in cases:
        res = run(*args)
        assert res.exit_code == 1, (args, res.output)
        lines = [line for line in res.output.splitlines() if line.startswith("recapfast: error")]
        assert len(lines) == 1, (args, res.output)


def test_demo_runs_on_the_bundled_models(tmp_path):
    res = run("demo", tmp_path / "demo", "--count", 8, "--quiet", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert res.output.count("Clean accuracy:") == 2
    assert "model `baseline`" in res.output and "model `robust`" in res.output
    assert res.output.count("### Worst-case check:") == 2


def test_option_groups_keep_each_commands_option_order_and_pass_namespaces():
    """The shared option groups (recapfast/cli/_options.py) stand where they are declared in each command, with
    the command's own defaults, and reach the command as one namespace per group."""
    import typer

    from recapfast.cli._options import RUN, grouped

    def names(command):
        return [p.name for p in typer.main.get_command(app).commands[command].params]

    assert names("screen")[-5:] == ["device", "batch_size", "workers", "force", "quiet"]
    assert names("transfer")[-6:] == ["size", "seed", "device", "batch_size", "force", "quiet"]
    assert "workers" not in names("transfer") and "attack_seed" not in names("transfer")
    attack = names("attack")
    assert attack.index("resume") < attack.index("apgd_steps") < attack.index("attack_seed") < \
        attack.index("model") < attack.index("std") < attack.index("size") < attack.index("device")
    screen = typer.main.get_command(app).commands["screen"]
    assert next(p for p in screen.params if p.name == "batch_size").default == 32
    with pytest.raises(ValueError, match="not options of this group: nope"):
        RUN.but(drop=("nope",))

    seen = {}

    @grouped
    def command(first: int = 1, run: object = RUN.but(drop=("workers",), batch_size=8), last: int = 2):
        seen.update(first=first, run=vars(run), last=last)

    tiny = typer.Typer()
    tiny.command()(command)
    res = CliRunner().invoke(tiny, ["--batch-size", "3", "--quiet", "--last", "5"])
    assert res.exit_code == 0, res.output
    assert seen == {"first": 1, "last": 5, "run": {"device": "auto", "batch_size": 3, "force": False, "quiet": True}}
