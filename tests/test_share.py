"""Sharing and reproducibility: the smoke study runs once through Snakemake and is committed
to DVC; a second copy reproduces it with `dvc repro` (both are the session's shared studies,
tests/studies.py; tests that change anything work on a copy); artifacts travel through a local
directory, S3 (moto's server) and SSH (a real sshd) remotes; bad remotes fail in one line."""

import configparser
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from clipdistill.io import tree_hash

from conftest import BIN, REPO
from studies import lock

pytestmark = pytest.mark.slow
SECRET_KEYS = {"access_key_id", "secret_access_key", "session_token", "password", "keyfile", "key_file",
               "passphrase", "credentialpath", "gdrive_client_secret", "sas_token", "account_key"}


def _env(home: Path | None = None):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard", "DVC_NO_ANALYTICS": "1"}
    if home is not None:
        env["HOME"] = str(home)
        env["DVC_SITE_CACHE_DIR"] = str(home / "dvc-site")
    return env


def run(args, cwd, home, check=True, timeout=600):
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *map(str, args)], cwd=cwd, env=_env(home),
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc(*args, cwd, home, check=True):
    return run([BIN / "dvc", *args], cwd, home, check)


def cli(*args, cwd, home, check=True):
    return run([BIN / "clipdistill", *args], cwd, home, check)


def unanswered_port():
    """A socket bound to a port the kernel chose and never listened on: connecting is refused.
    The caller keeps it open, so no other process can take the port meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


@pytest.fixture(scope="module")
def study(snakemake_study):
    """The smoke study run by Snakemake, recorded with `dvc commit`, committed to git."""
    return snakemake_study["root"]


def test_smoke_study_end_to_end_leaves_nothing_to_do(study, home):
    for expected in ("results/preview/scenes.png", "results/vqa_metrics/blind/vlm0.json", "results/report/study.md",
                     "results/vqa_metrics/students/distill-x1/m/xs/clipkd/0/vlm1.json",
                     "results/student_eval/distill-x1/m/xs/baseline/0/metrics.json"):
        assert (study / expected).is_file(), expected
    assert "Nothing to be done" in run([BIN / "snakemake", "-n"], study, home).stdout
    assert dvc("status", "--json", cwd=study, home=home).stdout.strip() == "{}"


def test_snakemake_report_and_dvc_metrics_and_plots(study, home, tmp_path):
    html = tmp_path / "report.html"
    run([BIN / "snakemake", "--report", html], study, home)
    text = html.read_text(errors="replace")
    for needle in ("teacher_vs_student_vqa.png", "study.csv", "do better", "scenes.png"):
        assert needle in text, needle
    metrics = json.loads(dvc("metrics", "show", "--json", cwd=study, home=home).stdout)
    files = {f for repo in metrics.values() for f in repo["data"]}
    assert "results/report/correlations.json" in files and "results/vqa_metrics/blind/vlm1.json" in files
    dvc("plots", "show", "-o", tmp_path / "plots", cwd=study, home=home)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert all(name in page for name in ("teacher_vs_student_vqa", "zeroshot_vs_vqa", "learning_curves"))


def test_snakemake_then_dvc_commit_equals_dvc_repro(study, dvc_study):
    """Two runs of the smoke study, one per runner: every stage's deps, params and outs hashes agree."""
    ours, theirs = lock(study), lock(dvc_study)
    assert ours.keys() == theirs.keys()
    for stage in ours:
        assert ours[stage] == theirs[stage], stage


def test_committed_dvc_config_holds_no_credentials():
    parser = configparser.ConfigParser()
    parser.read(REPO / ".dvc" / "config")
    assert parser.get("core", "remote") == "local"
    keys = {k for section in parser.sections() for k in parser[section]}
    assert not keys & SECRET_KEYS
    assert "/config.local" in (REPO / ".dvc" / ".gitignore").read_text().split()


# ---------------------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def s3_server():
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # it binds a free port itself
    server.start()
    url = "http://127.0.0.1:%d" % server.get_host_and_port()[1]
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="artifacts")
    yield server, url
    server.stop()


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or os.geteuid() != 0:
        pytest.skip("needs root and Debian's openssh-server (make test installs it when it can)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / name], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
    made_run_dir = not Path("/run/sshd").exists()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory: required
    proc, port = start_sshd(sshd, d)
    yield port, d / "client"
    proc.terminate()
    proc.wait(timeout=10)
    if made_run_dir:
        shutil.rmtree("/run/sshd", ignore_errors=True)


def start_sshd(sshd: str, d: Path, tries: int = 5):
    """sshd cannot bind port 0 and report it, so: offer it a port the kernel just called free and
    believe only sshd's own "Server listening" line; if another process took the port first, sshd
    exits and the next port is tried (a port probe would be answered by that other process)."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", d / "sshd_config", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stderr:  # ends when sshd exits
            lines.append(line)
            if f"Server listening on 127.0.0.1 port {port}" in line:
                threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
                return proc, port
        proc.wait(timeout=10)
    raise RuntimeError("sshd did not start:\n" + "".join(lines[-20:]))


def configure(kind: str, root: Path, home: Path, request, tmp_path) -> str:
    """Add a remote of `kind` to `root` (URL committed, secrets in config.local); return its name."""
    if kind == "local":
        return "local"  # the project's default remote, a directory next to the project
    if kind == "s3":
        _, url = request.getfixturevalue("s3_server")
        dvc("remote", "add", "s3r", f"s3://artifacts/{tmp_path.name}", cwd=root, home=home)
        dvc("remote", "modify", "s3r", "endpointurl", url, cwd=root, home=home)
        return "s3r"
    port, _ = request.getfixturevalue("ssh_server")
    dvc("remote", "add", "sshr", f"ssh://root@127.0.0.1:{port}{tmp_path / 'ssh-remote'}", cwd=root, home=home)
    dvc("remote", "modify", "sshr", "timeout", "20", cwd=root, home=home)
    return "sshr"


def credentials(kind: str, root: Path, home: Path, request) -> None:
    """What each user keeps in .dvc/config.local (never committed)."""
    if kind == "s3":
        for key in ("access_key_id", "secret_access_key"):
            dvc("remote", "modify", "--local", "s3r", key, "testing", cwd=root, home=home)
    elif kind == "ssh":
        _, key = request.getfixturevalue("ssh_server")
        dvc("remote", "modify", "--local", "sshr", "keyfile", key, cwd=root, home=home)


@pytest.mark.parametrize("kind", ["local", "s3", "ssh"])
def test_push_clone_pull_leaves_both_runners_with_nothing_to_do(kind, study, home, request, tmp_path):
    origin = tmp_path / "origin"
    shutil.copytree(study, origin, symlinks=True)
    name = configure(kind, origin, home, request, tmp_path)
    credentials(kind, origin, home, request)
    run(["git", "add", ".dvc/config"], origin, home)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "remote", "--allow-empty"], origin, home)
    committed = run(["git", "show", "HEAD:.dvc/config"], origin, home).stdout
    assert not any(line.split("=")[0].strip() in SECRET_KEYS for line in committed.splitlines())
    cli("push", "--remote", name, cwd=origin, home=home)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", origin, clone], tmp_path, home)
    credentials(kind, clone, home, request)
    cli("pull", "--remote", name, cwd=clone, home=home)
    assert dvc("status", "--json", cwd=clone, home=home).stdout.strip() == "{}"
    for out in ("results/students/distill-x1/m/xs/clipkd/0", "results/vqa/blind", "results/report",
                "results/features/distill_shifted/s"):
        assert tree_hash(clone / out) == tree_hash(origin / out), out
    dry = run([BIN / "snakemake", "-n", "--workflow-profile", "workflow/profiles/default"], clone, home)
    assert "Nothing to be done" in dry.stdout, dry.stdout[-2000:]


def test_sync_refuses_when_artifacts_differ_from_the_lock(study, home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, symlinks=True)
    (copy / "results/teacher_eval/s/metrics.json").write_text("{}")
    proc = cli("sync", cwd=copy, home=home, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "teacher_eval@s" in proc.stderr, proc.stderr


def _one_line_error(proc, name: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipdistill: error:") and repr(name) in lines[0], lines
    return lines[0]


def test_unreachable_s3_remote_fails_in_one_line_and_touches_nothing(study, home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, symlinks=True)
    sock, port = unanswered_port()  # held until the test ends: a port where nothing answers
    dvc("remote", "add", "gone", "s3://artifacts/x", cwd=copy, home=home)
    dvc("remote", "modify", "gone", "endpointurl", f"http://127.0.0.1:{port}", cwd=copy, home=home)
    for key in ("access_key_id", "secret_access_key"):
        dvc("remote", "modify", "--local", "gone", key, "testing", cwd=copy, home=home)
    before = tree_hash(copy / "results")
    _one_line_error(cli("push", "--remote", "gone", cwd=copy, home=home, check=False), "gone")
    _one_line_error(cli("pull", "--remote", "gone", cwd=copy, home=home, check=False), "gone")
    assert tree_hash(copy / "results") == before
    sock.close()


def test_missing_local_remote_and_unknown_remote_fail_in_one_line(study, home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, symlinks=True)
    dvc("remote", "add", "nowhere", str(tmp_path / "no-such-dir"), cwd=copy, home=home)
    before = tree_hash(copy / "results")
    line = _one_line_error(cli("pull", "--remote", "nowhere", cwd=copy, home=home, check=False), "nowhere")
    assert "does not exist" in line
    line = _one_line_error(cli("pull", "--remote", "typo", cwd=copy, home=home, check=False), "typo")
    assert "configured:" in line
    assert tree_hash(copy / "results") == before
