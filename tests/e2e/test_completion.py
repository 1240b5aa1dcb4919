"""completion/retirectl, sourced into a plain bash (no bash-completion package
needed) and asked for candidates as bash would, COMP_WORDS and COMP_CWORD set;
the keys come from a real ledger after a real run."""

import os
import shutil
import subprocess

import pytest

from conftest import BUILD, child_env, num, phone, pid

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "completion", "retirectl")
STATES = ["pending", "deferred", "in_flight", "retrying", "scheduled", "released", "failed", "cancelled",
          "unresolved", "in_use"]

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="bash is not installed")


def complete(*words):
    """The candidates for the last word of `words` (the one being completed)."""
    env = child_env()
    env["PATH"] = BUILD + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                        'source "$0" || exit 9; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ));'
                        ' COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; _retirectl;'
                        ' printf "%s\\n" "${COMPREPLY[@]}"', SCRIPT] + list(words),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       timeout=30, text=True)
    assert p.returncode == 0, p
    assert p.stderr == "", "completion must be quiet: %r" % p.stderr
    return sorted(w for w in p.stdout.split("\n") if w)


@pytest.fixture
def rig(make_rig):
    """A ledger with a failed phone (its DELETE refused), a released one, a deferred one."""
    rig = make_rig([phone(1, provider="custom"), phone(2, provider="custom"), phone(3, status="reserved")])
    rig.fake.script(pid(2), "DELETE", [409])
    rig.write_config([{"number": num(1)}, {"id": pid(2)}, {"number": num(3)}])
    rig.run()
    states = {k: r["state"] for k, r in rig.list().items()}
    assert states == {num(1): "released", pid(2): "failed", num(3): "deferred"}, states
    return rig


def test_commands():
    assert complete("retirectl", "") == sorted(
        ["check", "plan", "status", "list", "show", "history", "retry", "approve", "reload", "pause", "resume"])
    assert complete("retirectl", "hi") == ["history"]
    assert complete("retirectl", "-c", "/nowhere.conf", "st") == ["status"]


def test_each_command_has_its_options():
    assert complete("retirectl", "history", "--") == sorted(
        ["--config", "--ledger", "--help", "--version", "--json", "--csv", "--state", "--since", "--until",
         "--after-seq"])
    assert complete("retirectl", "history", "--af") == ["--after-seq"]
    assert "--openmetrics" in complete("retirectl", "status", "--")
    assert "--csv" not in complete("retirectl", "status", "--")
    assert complete("retirectl", "list", "--s") == ["--state"]
    assert complete("retirectl", "plan", "--l") == ["--ledger", "--live"]
    assert "--live" not in complete("retirectl", "show", "--")
    assert complete("retirectl", "retry", "--j") == []


def test_states():
    assert complete("retirectl", "list", "--state", "") == sorted(STATES)
    assert complete("retirectl", "history", "--state", "re") == ["released", "retrying"]
    # --state=re: bash splits it into --state, = and re.
    assert complete("retirectl", "history", "--state", "=", "re") == ["released", "retrying"]
    assert complete("retirectl", "history", "--since", "") == []
    assert complete("retirectl", "history", "--after-seq", "") == []
    # The cursor is the option's value, not the command.
    assert complete("retirectl", "--after-seq", "12", "history", "--c") == ["--config", "--csv"]


def test_keys_from_the_ledger(rig):
    assert complete("retirectl", "-c", rig.config_path, "show", "") == sorted([num(1), pid(2), num(3)])
    assert complete("retirectl", "-c", rig.config_path, "show", "+34") == sorted([num(1), num(3)])
    assert complete("retirectl", "--ledger", rig.ledger, "show", "+34") == sorted([num(1), num(3)])
    # --config=FILE, as bash splits it.
    assert complete("retirectl", "--config", "=", rig.config_path, "show", "+") == sorted([num(1), num(3)])
    # retry takes failed phones only; one key, then nothing more.
    assert complete("retirectl", "-c", rig.config_path, "retry", "") == [pid(2)]
    assert complete("retirectl", "-c", rig.config_path, "show", num(1), "") == []


def test_quiet_when_the_ledger_cannot_be_read(tmp_path):
    assert complete("retirectl", "-c", str(tmp_path / "missing.conf"), "show", "") == []
    bad = tmp_path / "bad.conf"
    bad.write_text("this is not a config\n")
    assert complete("retirectl", "-c", str(bad), "retry", "") == []


def test_files_for_config_and_ledger(tmp_path):
    (tmp_path / "retired.conf").write_text("")
    assert complete("retirectl", "-c", str(tmp_path / "ret")) == [str(tmp_path / "retired.conf")]
    assert complete("retirectl", "--ledger", str(tmp_path / "ret")) == [str(tmp_path / "retired.conf")]


def test_make_install_puts_it_where_bash_completion_looks():
    p = subprocess.run(["make", "-s", "-n", "install", "DESTDIR=/nonexistent", "PREFIX=/usr"],
                       cwd=os.path.join(HERE, "..", ".."), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    assert "install -m 0644 completion/retirectl /nonexistent/usr/share/bash-completion/completions/retirectl" \
        in p.stdout, p.stdout
