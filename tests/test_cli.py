"""The switchyard command line: --version, --help and `check --config`."""

from __future__ import annotations

import subprocess


def _run(binary, *args: str) -> tuple[int, str]:
    res = subprocess.run([str(binary), *args], capture_output=True, timeout=15)
    return res.returncode, (res.stdout + res.stderr).decode("utf-8", "replace")


GOOD = """\
cluster_id: cli-test
listen:
  bind: 127.0.0.1:19092
  virtual_nodes: 3
sites:
  - name: local
    bootstrap: ["127.0.0.1:29092"]
admin:
  bind: 127.0.0.1:19644
"""


def test_version_and_help(switchyard_bin):
    code, out = _run(switchyard_bin, "--version")
    assert code == 0 and out.strip(), f"--version: exit {code}, output {out!r}"
    code, out = _run(switchyard_bin, "--help")
    assert code == 0, f"--help exited {code}: {out}"
    for sub in ("run", "check"):
        assert sub in out, f"--help does not mention the {sub!r} command:\n{out}"


def test_check_accepts_a_valid_config(switchyard_bin, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 0, f"check of a valid config exited {code}:\n{out}"
    assert "config OK" in out, out


def test_check_reports_every_problem_with_its_key(switchyard_bin, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        GOOD.replace("cluster_id: cli-test", "cluster_id: ''").replace("virtual_nodes: 3", "virtual_nodes: 0")
    )
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 1, f"check of an invalid config exited {code}:\n{out}"
    for key in ("cluster_id", "listen.virtual_nodes"):
        assert key in out, f"problem with {key} not reported:\n{out}"


def test_check_rejects_unknown_keys(switchyard_bin, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(GOOD.replace("  virtual_nodes: 3", "  virtual_nodes: 3\n  virtual_node: 4"))
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 1, f"a config with an unknown key was accepted (exit {code}):\n{out}"
    assert "virtual_node" in out and "listen" in out, f"unknown key not named with its path:\n{out}"


def test_check_names_the_authorization_rule_that_is_wrong(switchyard_bin, tmp_path):
    rules = ("authorization:\n  super_users: ['User:ops']\n  rules:\n"
             "    - {principals: ['User:app'], topics: {prefix: 'orders.'}, operations: [read, write]}\n")
    path = tmp_path / "acl.yaml"
    path.write_text(GOOD + rules)
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 0, f"valid rules were refused:\n{out}"
    bad = rules + ("    - {principals: ['app'], groups: {exact: 'g'}, operations: [write]}\n"
                   "    - {principals: ['User:x'], topics: {regex: '('}, operations: [read]}\n")
    path.write_text(GOOD + bad)
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 1, f"broken rules were accepted:\n{out}"
    for key, words in [("authorization.rules[1].principals[0]", "User:<name>"),
                       ("authorization.rules[1].operations[0]", "does not apply to group"),
                       ("authorization.rules[2].topics", "regex")]:
        line = next((l for l in out.splitlines() if key in l), None)
        assert line and words in line, f"{key} not reported with `{words}`:\n{out}"


def test_check_names_the_tls_file_that_is_wrong(switchyard_bin, tmp_path):
    from tls_pki import Pki

    pki = Pki(tmp_path / "pki", "cli")
    server = pki.issue("switchyard", ["localhost"])
    other = pki.issue("other")
    expired = pki.issue("old", expired=True)
    tls = (f"  tls:\n    cert: {server.cert}\n    key: {server.key}\n"
           f"    client_auth: required\n    client_ca: {pki.ca_pem}\n")
    good = GOOD.replace("  virtual_nodes: 3\n", "  virtual_nodes: 3\n" + tls)
    path = tmp_path / "tls.yaml"
    path.write_text(good)
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 0, f"a valid TLS config was refused:\n{out}"
    site_tls = f"    tls:\n      ca: {tmp_path / 'missing-ca.pem'}\n"
    bad = (good.replace(f"key: {server.key}", f"key: {other.key}")
               .replace(f"client_ca: {pki.ca_pem}", f"client_ca: {expired.cert}")
               .replace('    bootstrap: ["127.0.0.1:29092"]\n', '    bootstrap: ["127.0.0.1:29092"]\n' + site_tls))
    path.write_text(bad)
    code, out = _run(switchyard_bin, "check", "--config", str(path))
    assert code == 1, f"a config with unusable TLS files was accepted:\n{out}"
    for key, words in [("listen.tls.client_ca", "not valid now"), ("sites[0].tls.ca", "missing-ca.pem")]:
        line = next((l for l in out.splitlines() if key in l), None)
        assert line is not None and words in line, f"{key} not reported with {words!r}:\n{out}"


def test_credentials_adds_users_without_storing_passwords_and_says_why_not(switchyard_bin, tmp_path):
    path = tmp_path / "users.yaml"

    def add(*args: str, password: str = "s3cret-pw") -> tuple[int, str]:
        res = subprocess.run([str(switchyard_bin), "credentials", "--file", str(path), *args],
                             input=f"{password}\n".encode(), capture_output=True, timeout=30)
        return res.returncode, (res.stdout + res.stderr).decode("utf-8", "replace")

    code, out = add("--user", "alice")
    assert code == 0 and "alice" in out, out
    code, out = add("--user", "bob", "--mechanisms", "SCRAM-SHA-512")
    assert code == 0, out
    text = path.read_text()
    assert "alice" in text and "bob" in text and "s3cret-pw" not in text, text
    assert oct(path.stat().st_mode & 0o777) == "0o600", "the credentials file is readable by others"
    for args, password, words in [
        (("--user", "carol", "--iterations", "100"), "pw", "4096"),
        (("--user", "carol", "--mechanisms", "SCRAM-MD5"), "pw", "unknown mechanism"),
        (("--user", "carol"), "", "empty"),
    ]:
        code, out = add(*args, password=password)
        assert code == 1 and words in out, f"{args}: exit {code}: {out}"
    assert "carol" not in path.read_text()
