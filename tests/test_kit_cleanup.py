"""The test kit's own promise: a failed test leaves its logs for a post-mortem, not its bulk.

pytest keeps a failed test's tmp_path (tmp_path_retention_policy); the
conftest's `_no_bulk_left` removes what is over 1 MiB in it either way.
"""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def test_a_failed_test_keeps_its_small_files_and_loses_its_big_ones(pytester):
    pytester.makeconftest(
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(CONFTEST.parent)!r})\n"
        f"spec = importlib.util.spec_from_file_location('nst_conftest', {str(CONFTEST)!r})\n"
        "kit = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(kit)\n"
        "_no_bulk_left = kit._no_bulk_left\n")
    pytester.makepyfile(test_inner=(
        "def test_fails(tmp_path):\n"
        "    (tmp_path / 'vgg19.pth').write_bytes(bytes(2 << 20))\n"
        "    (tmp_path / 'nested').mkdir()\n"
        "    (tmp_path / 'nested' / 'photo.tif').write_bytes(bytes(3 << 20))\n"
        "    (tmp_path / 'daemon.log').write_text('what the daemon said')\n"
        "    assert False\n"))
    basetemp = pytester.path / "basetemp"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", f"--basetemp={basetemp}",
                                           "-o", "tmp_path_retention_policy=failed")
    result.assert_outcomes(failed=1)
    kept = basetemp / "test_fails0"
    assert (kept / "daemon.log").read_text() == "what the daemon said"
    assert not (kept / "vgg19.pth").exists() and not (kept / "nested" / "photo.tif").exists()
