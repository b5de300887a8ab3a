"""A corpus of bad inputs: each gets exit code 2 and one line on stderr naming the problem, no
traceback, and leaves no file behind (the input folders and the working folder are unchanged).

Each case runs the real CLI (``python -m search.cli ARGS``, in a working folder of its own) in
a process of its own. Importing the CLI takes seconds (torch, Ray, pyautoattack), so the
processes are forked from one that has imported what search.cli imports; a fork then runs
search.cli as ``-m`` would.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from analysis import ExperimentMeta
from search import SearchConfig
from trainable import Trainer, build_config

FORK_SERVER = r"""
import json, os, runpy, sys, traceback
# what the commands import when they run, imported once here (each case is a fork)
import search._cli_search, search._cli_analysis, search._cli_train, search._cli_confirm
import search._run, search._confirm, trainable._trainer, analysis._report, analysis._export

for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["clustune", *case["argv"]]
        code = 0
        try:
            runpy.run_module("search.cli", run_name="__main__", alter_sys=True)
        except SystemExit as exit:  # as the interpreter turns it into an exit status
            if exit.code is None or isinstance(exit.code, int):
                code = exit.code or 0
            else:
                print(exit.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""

DIGITS = ["--set", "data.dataset=digits", "--set", "warm_start.ce_epochs=0"]


def _warm_start(name: str) -> list[str]:
    return ["train", *DIGITS, "--set", f"warm_start.checkpoint={{in}}/{name}"]


# (case id, arguments ({in}: the input folder), what the error line must say)
CASES = [
    # configuration and --set
    ("malformed-yaml", ["train", "--config", "{in}/malformed.yaml"], "malformed YAML (line 2)"),
    ("missing-config", ["train", "--config", "{in}/nowhere.yaml"], "cannot read"),
    ("config-not-a-mapping", ["train", "--config", "{in}/list.yaml"], "mapping"),
    ("config-not-utf8", ["train", "--config", "{in}/binary.yaml"], "not a UTF-8 text file"),
    ("search-config-not-utf8", ["search", "--config", "{in}/binary.yaml"],
     "not a UTF-8 text file"),
    ("device-missing", ["train", *DIGITS, "--set", "device=cuda:7"], "device=cuda:7"),
    ("device-not-a-device", ["train", *DIGITS, "--set", "device=gpu"], "device='gpu'"),
    ("seed-too-large", ["train", *DIGITS, "--set", "seed=100000000000000000000000"], "seed: "),
    ("k-above-smallest-class", ["train", *DIGITS, "--set", "data.train_subset=30",
                                "--set", "clusters.k=4"], "exceeds the 3 training examples"),
    ("l2-radius-linf-sized", ["train", *DIGITS, "--set", "attack.norm=l2",
                              "--set", "attack.eps=0.03"], "Linf-sized radius"),
    ("lr-inf", ["train", "--set", "optim.lr=inf"], "optim.lr: "),
    ("lr-yaml-inf", ["train", "--set", "optim.lr=.inf"], "optim.lr: "),
    ("eps-nan", ["train", "--set", "attack.eps=.nan"], "attack.eps: "),
    ("eps-above-1", ["train", "--set", "attack.eps=8"], "attack.eps=8.0 exceeds 1"),
    ("step-size-above-1", ["train", "--set", "attack.step_size=2"],
     "attack.step_size=2.0 exceeds 1"),
    ("margin-inf", ["train", "--set", "clusters.alpha=.inf"], "clusters.alpha: "),
    ("one-example-per-cluster", ["train", "--set", "clusters.d=1"], "clusters.d: "),
    ("free-with-lam-ce", ["train", "--set", "objective.variant=magnet_adv", "--set",
                          "objective.adv_mode=free", "--set", "objective.lam_ce=1"],
     "has no CE term"),
    ("search-setting-inf", ["search", "--set", "search.reduction_factor=.inf"],
     "search.reduction_factor: "),
    ("unknown-key", ["train", "--set", "clusters.kk=3"], "clusters.kk: unknown key"),
    ("unknown-section", ["train", "--set", "optimiser.lr=0.1"], "optimiser: unknown key"),
    ("wrong-type", ["train", "--set", "clusters.k=two"], "clusters.k: "),
    ("fractional-int", ["train", "--set", "seed=1.5"], "seed: "),
    ("L-above-C*K", ["train", "--set", "clusters.k=2", "--set", "clusters.l=99"],
     "clusters.l=99 exceeds C*K=20"),
    ("M-above-C*K", ["train", "--set", "clusters.k=2", "--set", "clusters.m=25"],
     "clusters.m=25 exceeds C*K=20"),
    ("negative-eps", ["train", "--set", "attack.eps=-0.1"], "attack.eps: "),
    ("zero-lr", ["train", "--set", "optim.lr=0"], "optim.lr: "),
    ("zero-epochs", ["train", "--set", "optim.epochs=0"], "optim.epochs: "),
    ("val-fraction-1", ["train", "--set", "data.val_fraction=1"], "data.val_fraction: "),
    ("unknown-dataset", ["train", "--set", "data.dataset=mnist"], "data.dataset: "),
    ("learned-head-no-lam-ce", ["train", "--set", "clusters.head=learned", "--set",
                                "objective.lam_ce=0"], "objective.lam_ce"),
    ("free-outside-magnet-adv", ["train", "--set", "objective.variant=qtrades", "--set",
                                 "objective.adv_mode=free"], "applies to variant magnet_adv"),
    ("checkpoint-and-ce-epochs", ["train", "--set", "warm_start.checkpoint=x.pt"],
     "give checkpoint or ce_epochs, not both"),
    ("cifar-without-root", ["train", "--set", "data.dataset=cifar10"], "data.root must name"),
    ("unknown-preset", ["train", "--preset", "nope"], "unknown preset 'nope'"),
    ("set-without-value", ["train", "--set", "clusters.k"], "expected KEY.PATH=VALUE"),
    ("set-empty-key-part", ["train", "--set", "clusters..k=1"], "expected KEY.PATH=VALUE"),
    ("set-bad-yaml", ["train", "--set", "clusters.k=[1"], "value is not valid YAML"),
    ("set-below-a-value", ["train", "--set", "seed=1", "--set", "seed.x=2"],
     "seed is already set to a value"),
    ("preset-and-config", ["train", "--preset", "paper-adv", "--config", "x.yaml"],
     "not allowed with argument"),
    ("unknown-option", ["train", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    # data
    ("fmnist-missing", ["train", "--set", "data.root={in}/empty"],
     "train-images-idx3-ubyte(.gz) not found"),
    ("fmnist-not-idx", ["train", "--set", "data.root={in}/fmnist-bad-magic"], "bad magic number"),
    ("fmnist-truncated-gz", ["train", "--set", "data.root={in}/fmnist-truncated"],
     "cannot read"),
    ("cifar-files-missing", ["train", "--set", "data.dataset=cifar10", "--set",
                             "data.root={in}/empty"], "CIFAR-10 file data_batch_1 missing"),
    ("cifar-corrupt-archive", ["train", "--set", "data.dataset=cifar10", "--set",
                               "data.root={in}/cifar-10-python.tar.gz"], "md5 mismatch"),
    ("cifar-not-found", ["train", "--set", "data.dataset=cifar10", "--set",
                         "data.root={in}/nowhere"], "CIFAR-10 not found"),
    # warm-start checkpoints
    ("checkpoint-truncated", _warm_start("truncated.pt"), "not a readable clustune checkpoint"),
    ("checkpoint-foreign", _warm_start("foreign.pt"), "not a clustune checkpoint"),
    ("checkpoint-with-code", _warm_start("evil.pt"), "not a readable clustune checkpoint"),
    ("checkpoint-missing", _warm_start("nowhere.pt"), "does not exist"),
    ("checkpoint-other-model", _warm_start("width8.pt"), "backbone does not match"),
    # output folders
    ("train-out-not-empty", ["train", "--out", "{in}/not-empty"], "not empty"),
    ("train-out-is-a-file", ["train", "--out", "{in}/file.txt"], "not empty"),
    ("train-out-under-a-file", ["train", *DIGITS, "--out", "{in}/file.txt/run"],
     "Not a directory"),
    # searches
    ("search-unknown-preset", ["search", "--preset", "nope"], "unknown search preset 'nope'"),
    ("search-unreachable-cluster", ["search", "--address", "127.0.0.1:9"],
     "cannot reach a Ray cluster at 127.0.0.1:9"),
    ("search-experiment-exists", ["search", "--storage", "{in}/store", "--name", "taken"],
     "already exists"),
    ("search-bad-name", ["search", "--name", "../up"], "--name '../up'"),
    ("search-not-a-number", ["search", "--num-samples", "many"], "invalid int value: 'many'"),
    ("search-bad-space", ["search", "--config", "{in}/bad-space.yaml"], "low <= high"),
    ("search-unknown-sampler", ["search", "--set", "search.sampler=annealing"],
     "search.sampler: "),
    ("search-missing-data", ["search", "--set", "train.data.root={in}/empty"],
     "not found under"),
    ("search-foreign-checkpoint", ["search", "--set", "train.data.dataset=digits", "--set",
                                   "train.warm_start.ce_epochs=0", "--set",
                                   "train.warm_start.checkpoint={in}/foreign.pt"],
     "not a clustune checkpoint"),
    # experiment folders
    ("train-ignored-setting", ["train", *DIGITS, "--set", "objective.variant=magnet_adv",
                               "--set", "objective.consistency=kl"],
     "objective.consistency=kl would be ignored (used only with objective.variant=qtrades)"),
    ("resume-not-an-experiment", ["resume", "{in}/empty"], "not a clustune experiment"),
    ("status-missing-folder", ["status", "{in}/nowhere"], "not a clustune experiment"),
    ("status-corrupt-meta", ["status", "{in}/corrupt"], "clustune.json is unreadable"),
    ("resume-corrupt-meta", ["resume", "{in}/corrupt"], "clustune.json is unreadable"),
    ("status-future-meta", ["status", "{in}/future"],
     "clustune.json is a clustune-experiment-v9 file; this clustune reads clustune-experiment-v1"),
    ("report-misshapen-meta", ["report", "{in}/misshapen"],
     "clustune.json is not a clustune experiment file (config: Input should be a valid "
     "dictionary)"),
    ("evaluate-top-k-0", ["evaluate", "{in}/exp", "--top-k", "0"], "--top-k"),
    ("evaluate-corrupt-result", ["evaluate", "{in}/exp-final"], "not JSON"),
    ("evaluate-binary-result", ["evaluate", "{in}/exp-binary"], "not a text file"),
    ("evaluate-foreign-result", ["evaluate", "{in}/exp-foreign"],
     "not a clustune-robustness-v1 result"),
    ("dashboard-no-study", ["dashboard", "{in}/exp"], "no optuna.db yet"),
    ("dashboard-damaged-study", ["dashboard", "{in}/exp-study"],
     "{in}/exp-study/optuna.db is not an sqlite database"),
    ("resume-damaged-search-state", ["resume", "{in}/exp-state"],
     "cannot resume: {in}/exp-state/experiment_state-2026-12-06_03-00-00.json is unreadable "
     "(JSONDecodeError)"),
    ("resume-damaged-study", ["resume", "{in}/exp-study"],
     "cannot resume: the Optuna study {in}/exp-study/optuna.db is not an sqlite database"),
    ("resume-damaged-tuner", ["resume", "{in}/exp-tuner"],
     "Ray Tune could not restore its saved search state"),
    ("dashboard-bad-port", ["dashboard", "{in}/exp", "--port", "70000"], "not a TCP port"),
    ("export-out-under-a-file", ["export", "{in}/exp", "--out", "{in}/file.txt/x"],
     "cannot write"),
    ("report-out-under-a-file", ["report", "{in}/exp", "--out", "{in}/file.txt/r.html"],
     "cannot write"),
    ("best-top-0", ["best", "{in}/exp", "--top", "0"], "must be at least 1"),
    ("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("no-command", [], "required: COMMAND"),
]


class _Code:
    """Unpickling this runs code: a checkpoint that would create PWNED in the working folder."""

    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').close()",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The bad files and folders the cases point at ({in})."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "malformed.yaml").write_text("clusters: [unclosed\n")
    (root / "list.yaml").write_text("- clusters\n- k\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00clusters\x89PNG\r\n")
    (root / "bad-space.yaml").write_text(yaml.safe_dump({
        "train": {"data": {"dataset": "digits"}, "clusters": {"m": 10}},
        "space": {"clusters.k": {"type": "int", "low": 3, "high": 1}}}))
    (root / "empty").mkdir()
    (root / "not-empty").mkdir()
    (root / "not-empty" / "keep.txt").write_text("mine")
    (root / "file.txt").write_text("mine")
    bad_magic = root / "fmnist-bad-magic"
    bad_magic.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad_magic / name).write_bytes(b"<html>not found</html>")
    truncated = root / "fmnist-truncated"
    truncated.mkdir()
    whole = gzip.compress(bytes(4096))
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    (root / "cifar-10-python.tar.gz").write_bytes(os.urandom(2048))

    width8 = build_config({"data": {"dataset": "digits"}, "model": {"width": 8},
                           "optim": {"epochs": 1}, "device": "cpu"})
    Trainer(width8).save(root / "width8.pt")
    whole = (root / "width8.pt").read_bytes()
    (root / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"state_dict": {"weight": torch.zeros(3)}}, root / "foreign.pt")
    (root / "evil.pt").write_bytes(pickle.dumps(_Code(), protocol=2))

    (root / "store" / "taken").mkdir(parents=True)
    (root / "store" / "taken" / "clustune.json").write_text("{}")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "clustune.json").write_text('{"name": "cut off')
    cfg = SearchConfig.model_validate({"train": {"data": {"dataset": "digits"}},
                                       "points": {"default": {}}})
    (root / "exp").mkdir()
    meta = ExperimentMeta(name="exp", created="2026-12-06T03:00:00", study_name="clustune-exp",
                          study_storage="sqlite:///nowhere.db",
                          config=cfg.model_dump(mode="json"), base=cfg.base_dict())
    (root / "exp" / "clustune.json").write_text(meta.model_dump_json())
    for name, change in (("future", {"format": "clustune-experiment-v9"}),
                         ("misshapen", {"config": "points"})):
        (root / name).mkdir()
        (root / name / "clustune.json").write_text(json.dumps({**meta.model_dump(), **change}))
    import optuna

    good_state = json.dumps({"trial_data": [], "runner_data": {}})
    for name, state, study, tuner in (("exp-state", '{"trial_data": [', True, b"x"),
                                      ("exp-study", good_state, False, b"x"),
                                      ("exp-tuner", good_state, True, b"\x80\x04garbage")):
        (root / name).mkdir()
        (root / name / "clustune.json").write_text((root / "exp" / "clustune.json").read_text())
        (root / name / "experiment_state-2026-12-06_03-00-00.json").write_text(state)
        (root / name / "tuner.pkl").write_bytes(tuner)
        if study:
            optuna.create_study(study_name="clustune-exp",
                                storage=f"sqlite:///{root / name / 'optuna.db'}")
        else:
            (root / name / "optuna.db").write_bytes(b"SQLite format 3\0 but cut short")
    for name, content in (("exp-final", b'{"clean_acc": 0.5, "cut'),
                          ("exp-binary", b"\x89PNG\r\n\x1a\n\xff\xfe"),
                          ("exp-foreign", b'{"accuracy": 0.5}')):
        (root / name / "final").mkdir(parents=True)
        (root / name / "clustune.json").write_text((root / "exp" / "clustune.json").read_text())
        (root / name / "final" / "0a1b2c3d-logprob.json").write_bytes(content)
    return root


@pytest.fixture(scope="module")
def run_cli():
    """run_cli(argv, cwd, stdout, stderr) -> exit code, in a fork of a process that has
    imported the CLI."""
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})

    def run(argv: list[str], cwd: Path, stdout: Path, stderr: Path) -> int:
        server.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "stdout": str(stdout),
                                       "stderr": str(stderr)}) + "\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    yield run
    server.stdin.close()
    server.wait(timeout=30)


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under roots, with size and modification time."""
    return {str(p): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(argv, needle, inputs, run_cli,
                                                         tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    argv = [a.replace("{in}", str(inputs)) for a in argv]
    before = _snapshot(inputs, cwd)
    code = run_cli(argv, cwd, tmp_path / "stdout", tmp_path / "stderr")
    err = (tmp_path / "stderr").read_text()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clustune: error:"), err
    assert needle.replace("{in}", str(inputs)) in lines[0]
    assert _snapshot(inputs, cwd) == before  # nothing created, changed or removed
