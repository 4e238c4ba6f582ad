"""Scrubbing: the shared secret-scanner fixtures are the spec, plus PEM, e-mail, home and samples."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

from sam_brain.pipeline.scrub import MARKER_RE, Scrubber
from sam_brain.protocols import Sample

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
SECRETS = SHARED / "secrets"
PLUGINS: dict[str, Any] = {c.__name__: c for c in get_mapping_from_secret_type_to_class().values()}


def _curl_password(text: str) -> list[str]:
    word = re.search(r"(?:-u|--user)\s+(\S+)", text)
    assert word is not None
    parts = [p.strip("{}") for p in word.group(1).replace('"', "").replace("'", "").split(":")]
    return [[p for p in parts if p][-1]]


def _pattern(regex: str, flags: int = 0) -> Callable[[str], list[str]]:
    return lambda text: [m.group(1) for m in re.finditer(regex, text, flags)]


# What the secret is, for gitleaks rows that carry no `secrets_b64`: our reading of each rule's
# secret group, written independently of sam_brain/pipeline/scrub.py.
GITLEAKS_SECRET: dict[str, Callable[[str], list[str]]] = {
    "1password-service-account-token": _pattern(r"(ops_eyJ[\w+/=-]+)"),
    "anthropic-api-key": _pattern(r"(sk-ant-[\w-]+)"),
    "anthropic-admin-api-key": _pattern(r"(sk-ant-[\w-]+)"),
    "aws-amazon-bedrock-api-key-long-lived": _pattern(r"(ABSK[\w+/=]+)"),
    "azure-ad-client-secret": _pattern(r"([\w.~-]{3}\dQ~[\w.~-]{31,34})"),
    "curl-auth-user": _curl_password,
    "curl-auth-header": _pattern(
        r"(?:-H|--header)\s+['\"]\s*[\w-]*(?:auth|token|key)[\w-]*\s*:\s*"
        r"(?:(?:bearer|basic|token|api-token)\s+)?"
        r"([^'\"\s]+)",
        re.I,
    ),
    "facebook-access-token": _pattern(r"\d{15,16}\|([\w-]{27})"),
    "facebook-page-access-token": _pattern(r"(EAA[A-Za-z0-9]+)"),
    "vault-service-token": _pattern(r"((?:hvs|s)\.[\w-]+)"),
    "intra42-client-secret": _pattern(r"(s-s4t2\w\w-[a-f0-9]+)"),
    "notion-api-token": _pattern(r"(ntn_\w+)"),
    "octopus-deploy-api-key": _pattern(r"(API-[A-Z0-9]+)"),
    "private-key": _pattern(r"^([A-Za-z0-9+/=]{16,})$", re.M),
    "sidekiq-sensitive-url": _pattern(r"//([^@/\s]+)@"),
    "slack-webhook-url": _pattern(r"hooks\.slack\.com/(\S+)"),
    "sourcegraph-access-token": _pattern(r"(sgp_\w+|\b[0-9a-fA-F]{40}\b)"),
}


def _rows(name: str) -> list[Any]:
    path = SECRETS / f"{name}.b64.jsonl"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} absent"))]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [pytest.param(row, id=f"{i}-{row['kind']}") for i, row in enumerate(rows)]


def _secrets(row: dict[str, Any], text: str) -> list[str]:
    """The values that must be gone after scrubbing one positive fixture row."""
    if row.get("secrets_b64"):
        return [base64.b64decode(s).decode("utf-8") for s in row["secrets_b64"]]
    tool, rule = row["kind"].split(":", 1)
    if tool == "detect-secrets":  # the fixture's own check: re-run that plugin on the text
        plugin = PLUGINS[rule]()
        found = [v for line in text.splitlines() for v in plugin.analyze_string(line) if v]
        return found or [m.group().strip(' "=:') for r in plugin.denylist for m in r.finditer(text)]
    assert rule in GITLEAKS_SECRET, f"no oracle for fixture kind {row['kind']}: add one"
    return GITLEAKS_SECRET[rule](text)


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber(home="/home/tester")


@pytest.mark.parametrize("row", _rows("positives"))
def test_every_positive_is_redacted(scrubber: Scrubber, row: dict[str, Any]) -> None:
    assert row["label"] == "tp"
    text = base64.b64decode(row["text_b64"]).decode("utf-8")
    secrets = _secrets(row, text)
    assert secrets and all(secrets), f"oracle found no secret in {text!r}"
    out, counts = scrubber.scrub_text(text)
    assert sum(counts.values()) >= 1 and "[REDACTED:" in out
    rest = MARKER_RE.sub("", out)
    assert [s for s in secrets if s in rest] == [], out
    assert scrubber.scrub_text(out) == (out, counts - counts)  # idempotent: nothing more to do


@pytest.mark.parametrize("row", _rows("negatives"))
def test_every_negative_is_untouched(scrubber: Scrubber, row: dict[str, Any]) -> None:
    assert row["label"] == "fp"
    text = base64.b64decode(row["text_b64"]).decode("utf-8")
    out, counts = scrubber.scrub_text(text)
    assert out == text
    assert not counts


PEM_BODY = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDAC4AWkdwKYSd8", "Ks14IReLcYgA=="]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("key:\n-----BEGIN PRIVATE KEY-----\n{0}\n{1}\n-----END PRIVATE KEY-----\nafter", "after"),
        ("-----BEGIN EC PRIVATE KEY-----\r\n{0}\r\n{1}\r\n-----END EC PRIVATE KEY-----", ""),
        ('{{"pem": "-----BEGIN RSA PRIVATE KEY-----\\n{0}\\n{1}\\n-----END RSA PRIVATE KEY-----"}}',
         '"}'),
        ('{{"pem": "-----BEGIN PRIVATE KEY-----\\n{0}\\n{1}\\n", "next": 1}}', '", "next": 1}'),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n{0}\n{1}\n[output truncated], rotate it", "rotate it"),
    ],
    ids=["pkcs8", "crlf", "json-escaped", "json-escaped-truncated", "truncated"],
)  # fmt: skip
def test_multiline_pem_blocks_are_removed_whole(scrubber: Scrubber, text: str, kept: str) -> None:
    text = text.format(*PEM_BODY)
    out, counts = scrubber.scrub_text(text)
    assert counts == {"private_key": 1}
    assert not any(line in out for line in PEM_BODY)
    assert "PRIVATE KEY" not in out
    assert out.endswith(kept)
    assert scrubber.scrub_text(out)[0] == out


def test_public_certificate_is_kept(scrubber: Scrubber) -> None:
    cert = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTx\n-----END CERTIFICATE-----"
    assert scrubber.scrub_text(cert) == (cert, {})


def test_emails_are_redacted_unless_disabled_or_service_addresses() -> None:
    text = "Mail ana.lopez+dev@gmail.com or bob@corp.co.uk; remote git@github.com:o/r.git"
    out, counts = Scrubber(home="/x").scrub_text(text)
    assert out == "Mail [REDACTED:email] or [REDACTED:email]; remote git@github.com:o/r.git"
    assert counts == {"email": 2}
    kept = "Co-Authored-By: Claude <noreply@anthropic.com>, test@example.com, logo@2x.png"
    assert Scrubber(home="/x").scrub_text(kept) == (kept, {})
    assert Scrubber(redact_emails=False, home="/x").scrub_text(text) == (text, {})


def test_home_paths_get_a_placeholder_user_and_stay_absolute() -> None:
    scrubber = Scrubber(home="/srv/people/sam")
    text = (
        "cd /home/alice/proj && ls /Users/bob/Library; cat /srv/people/sam/.bashrc\n"
        "log: /srv/people/sam/.claude/projects/-srv-people-sam-app/s.jsonl\n"
        "type C:\\Users\\shrey\\a.txt; dir C:\\\\Users\\\\shrey\\\\AppData\n"
        "untouched: /home /Users/Shared/x /mnt/home/carol /srv/people/samuel /home/user/x "
        "C:\\Users\\Public ls -srv-people-sam"
    )
    out, counts = scrubber.scrub_text(text)
    assert out == (
        "cd /home/user/proj && ls /Users/user/Library; cat /home/user/.bashrc\n"
        "log: /home/user/.claude/projects/-home-user-app/s.jsonl\n"
        "type C:\\Users\\user\\a.txt; dir C:\\\\Users\\\\user\\\\AppData\n"
        "untouched: /home /Users/Shared/x /mnt/home/carol /srv/people/samuel /home/user/x "
        "C:\\Users\\Public ls -srv-people-sam"
    )
    assert counts == {"home_path": 7}
    assert scrubber.scrub_text(out) == (out, {})
    on_mac = Scrubber(home="/Users/marco").scrub_text("open /Users/marco/a.py")
    assert on_mac == ("open /Users/user/a.py", {"home_path": 1})


def test_default_home_is_the_real_home() -> None:
    home = str(Path.home())
    placeholder = "/Users/user" if home.startswith("/Users/") else "/home/user"
    out, counts = Scrubber().scrub_text(f"log at {home}/x.log")
    assert out == f"log at {placeholder}/x.log"
    assert counts == ({} if home == placeholder else {"home_path": 1})


def test_file_path_arguments_stay_absolute(scrubber: Scrubber) -> None:
    """Claude Code's Read/Glob do not expand `~`: a scrubbed path argument must stay usable."""
    args = json.dumps({"file_path": "/home/tester/app/main.py", "pattern": "/Users/ana/**/*.py"})
    sample = Sample(
        id="s", source="sessions", source_key="k", group="g",
        messages=[{"role": "user", "content": "read it"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "toolu_01", "type": "function",
                       "function": {"name": "Read", "arguments": args}}]}],
    )  # fmt: skip
    out, counts = scrubber.scrub_sample(sample)
    new = json.loads(out.messages[1]["tool_calls"][0]["function"]["arguments"])
    assert new == {"file_path": "/home/user/app/main.py", "pattern": "/Users/user/**/*.py"}
    assert all(Path(v).is_absolute() for v in new.values()) and counts == {"home_path": 2}


@pytest.mark.parametrize(
    "text",
    [
        # 2.1.114 agent ids ("a" + 16 hex) in the Agent tool's result, quoted as Claude Code does.
        "Async agent launched. agentId: a4ca7529859c158c2 (use SendMessage with to: "
        "'a4ca7529859c158c2' to continue)",
        "resume 'agent-a4ca7529859c158c2' or 'acompact-fffbd0a1b2c3d4e5'; agentId: ea02459f",
        "got 'toolu_01NzjV452AGVQR51StZtarfB' back; x = \"srvtoolu_01AbCdEfGhIjKlMnOpQrStUv\"",
        "request 'req_011CUmqZ3x7bXyq8ZpYV2aBc' failed; message 'msg_01XFDUDYJgAACzvnptvVoYEL'",
        '{"request_id":"req_011CUmqZ3x7bXyq8ZpYV2aBc","session":"258c7280-ae70-4798-800f-63464d01a85d"}',
        "shell 'bash_1a2b3c4d5e6f7a8b9c0d' is running",
    ],
)
def test_claude_code_ids_are_not_secrets(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scrub_text(text) == (text, {})


def test_usernames_in_ls_and_git_output_are_redacted(scrubber: Scrubber) -> None:
    listing = (
        "total 8\ndrwxr-xr-x  3 alice  staff   96 Jan  1 12:00 .\n"
        "-rw-r--r--@ 1 alice  staff  1234 Jan  1 12:00 a.py\n"
        "-rw-rw-r-- 1 marco marco 2511 Feb 11 21:38 b.ex\n"
        "-rw-r--r-- 1 root root 1 Jan  1 12:00 c\nlrwxrwxrwx 1 1000 1000 4 Jan  1 12:00 d -> c"
    )
    out, counts = scrubber.scrub_text(listing)
    assert "alice" not in out and "marco" not in out and counts == {"username": 4}
    assert "[REDACTED:username]  staff" in out and "1 root root 1" in out and "1000 1000" in out
    log = (
        "commit 9a038989604e8da62ecddbe2094b16ce1b778be1\nAuthor: Jane Q. Doe <jane@corp.io>\n"
        "Date:   Mon Jan 1 12:00:00 2026 +0000\n\n    Fix the parser\n\n"
        "    Signed-off-by: Bob Smith <bob@corp.io>\n"
        "    Co-Authored-By: Claude Opus 4.6 <noreply@anthropic.com>\n"
        "Author: dependabot[bot] <49699333+dependabot[bot]@users.noreply.github.com>"
    )
    out, counts = scrubber.scrub_text(log)
    for gone in ("Jane", "Bob Smith", "jane@corp.io"):
        assert gone not in out
    assert "Author: [REDACTED:person_name] <[REDACTED:email]>" in out
    assert "Claude Opus 4.6 <noreply@anthropic.com>" in out and "dependabot[bot] <" in out
    assert counts == {"person_name": 2, "email": 2}
    assert scrubber.scrub_text(out) == (out, {})


@pytest.mark.parametrize(
    "text",
    [
        "def login(username: str, password: str) -> Token:\n    password = getpass.getpass()",
        'api_key = os.environ["OPENAI_API_KEY"]\nsecret_key = settings.SECRET_KEY',
        "generate(prompt, max_tokens=1024)\ntoken = tokenizer.encode(text)",
        'headers = {"Authorization": f"Bearer {token}"}\nh["Authorization"] = "Bearer " + tok',
        'commit 9a038989604e8da62ecddbe2094b16ce1b778be1\n"sha": "9a038989604e8da62ecddbe2094b16ce1b778be1"',
        '"sessionId": "258c7280-ae70-4798-800f-63464d01a85d"\nsee http://localhost:3000',
        "DATABASE_URL=postgres://user:${DB_PASSWORD}@localhost/db\nexport OPENAI_API_KEY=$(cat k)",
        "echo $TOKEN | docker login -u me --password-stdin\nPASSWORD_MIN_LENGTH = 12",
        'password: "{{ vault_password }}"\ntoken_type: "bearer"\nclient = OpenAI(api_key=api_key)',
        "Server on 127.0.0.1:8080, 10.0.0.7 and 192.168.1.20; metadata at 169.254.169.254",
        "sk-learn is not a package; the ghp_ prefix marks GitHub tokens; AKIA starts AWS keys",
    ],
)
def test_ordinary_code_and_logs_are_untouched(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scrub_text(text) == (text, {})


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        ("export ANTHROPIC_API_KEY=sk-ant-api03-Xy7kQ2mN9pL4vR8sT1wZ3bC6dF0gH5jK-aBcDeF",
         "Xy7kQ2mN9pL4vR8sT1wZ3bC6dF0gH5jK", "anthropic_api_key"),
        ('OPENAI_API_KEY="sk-proj-4fGh7JkL9mN2pQ5rS8tV1wX3yZ6aB0cD4eF7"', "4fGh7JkL9mN2pQ5r",
         "openai_api_key"),
        ("DB_PASSWORD=s3cr3tP@ss", "s3cr3tP@ss", "secret_assignment"),
        ("key = AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "AIzaSyA1b2C3d4E5f6G7h8", "google_api_key"),
        ("HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh", "AbCdEfGhIjKlMnOpQr",
         "huggingface_token"),
        ("postgres://admin:hunter2pass@db.internal:5432/app", "hunter2pass", "url_credentials"),
        ("mycli login --password hunter2x9 --user sam", "hunter2x9", "secret_assignment"),
        ("mysql -u root -p'S3cure!pass' -h db", "S3cure!pass", "mysql_password"),
        ("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "9f8e7d6c5b4a3928",
         "auth_header"),
    ],
)  # fmt: skip
def test_common_credentials_in_transcripts(
    scrubber: Scrubber, text: str, secret: str, kind: str
) -> None:
    out, counts = scrubber.scrub_text(text)
    assert secret not in out
    assert counts == {kind: 1}


def test_a_secret_found_once_is_redacted_everywhere(scrubber: Scrubber) -> None:
    text = "export API_TOKEN=Zf3D0LXCM3EIMbgJpUNn\ncurl -d t=Zf3D0LXCM3EIMbgJpUNn host"
    out, counts = scrubber.scrub_text(text)
    assert "Zf3D0LXCM3EIMbgJpUNn" not in out
    assert counts == {"secret_assignment": 2}


def test_scrub_sample_covers_every_field_and_keeps_json_valid(scrubber: Scrubber) -> None:
    token = "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"
    args = json.dumps({"command": f"git push https://x:{token}@github.com/o/r.git"})
    sample = Sample(
        id="s1",
        source="sessions",
        source_key="/home/tester/.claude/projects/p/s.jsonl",
        group="g1",
        kind="preference",
        messages=[
            {"role": "user", "content": "my email is ana@corp.io, token in env"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "Bash", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"echo {token}"},
            {"role": "assistant", "content": [{"type": "text", "text": "Done in /home/tester/p"}]},
        ],
        chosen="use DB_PASSWORD=s3cr3tP@ss9",
        rejected=f"Paste {token} here",
        meta={"cwd": "/home/tester/p", "nested": {"ips": ["8.8.4.4"]}, "n": 3},
    )  # fmt: skip
    before = json.dumps(sample.to_dict())
    out, counts = scrubber.scrub_sample(sample)
    assert json.dumps(sample.to_dict()) == before  # the input is not modified
    flat = json.dumps([out.messages, out.chosen, out.rejected, out.meta])
    for gone in (token, "ana@corp.io", "s3cr3tP@ss9", "/home/tester", "8.8.4.4"):
        assert gone not in flat
    call = out.messages[1]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "Bash"
    assert json.loads(call["function"]["arguments"]) == {
        "command": "git push https://[REDACTED:github_token]@github.com/o/r.git"
    }
    assert out.messages[3]["content"] == [{"type": "text", "text": "Done in /home/user/p"}]
    assert out.meta == {"cwd": "/home/user/p", "nested": {"ips": ["[REDACTED:public_ip]"]}, "n": 3}
    assert out.source_key == sample.source_key  # provenance keys are not content
    assert counts == {
        "github_token": 3, "email": 1, "secret_assignment": 1, "home_path": 2, "public_ip": 1
    }  # fmt: skip
    again, more = scrubber.scrub_sample(out)
    assert again == out and not more


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    return [s for v in obj for s in _strings(v)] if isinstance(obj, list) else []


def test_transcript_fixtures_have_no_credential_hits(scrubber: Scrubber) -> None:
    """Message content of real Claude Code transcripts: only personal data is redacted.

    E-mails, home paths, and the owner of `ls -l` lines (the spotter sessions list files of user
    `marco`); no credential kind fires.

    Also prints the throughput (CPU time, so other processes on the machine do not skew it).
    """
    files = sorted((SHARED / "claude-sessions").rglob("*.jsonl"))
    if not files:
        pytest.skip("../shared transcript fixtures absent")
    texts = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            message = record.get("message") if isinstance(record, dict) else None
            if isinstance(message, dict):
                texts += _strings(message.get("content"))
    found: Counter[str] = Counter()
    start = time.process_time()
    for text in texts:
        found.update(scrubber.scrub_text(text)[1])
    seconds = time.process_time() - start
    chars = sum(map(len, texts))
    print(f"scrubbed {len(texts)} texts, {chars} chars in {seconds:.2f}s CPU: "
          f"{chars / seconds / 1e6:.1f} M chars/s")  # fmt: skip
    assert chars > 100_000
    assert set(found) <= {"email", "home_path", "username"}, found
    assert found["username"] >= 2  # `-rw-rw-r-- 1 marco marco ...` in the spotter sessions


def test_fixture_sessions_keep_absolute_paths_and_ids() -> None:
    """Scrubbed samples of the real transcripts: `file_path` arguments that pointed into a home
    still point there (as the placeholder user), and Claude Code's ids survive."""
    from collectors.sessions import SessionCollector

    class NoCursors:
        def get_cursor(self, key: str) -> str | None:
            return None

    root = SHARED / "claude-sessions"
    if not root.is_dir():
        pytest.skip("../shared transcript fixtures absent")
    samples = SessionCollector([root]).collect(NoCursors()).samples
    scrubber = Scrubber(home="/nonexistent/home")
    homes = agents = 0
    for sample in samples:
        out, _ = scrubber.scrub_sample(sample)
        pairs = zip(sample.messages, out.messages, strict=True)
        for before, after in ((b, a) for b, a in pairs if "tool_calls" in b):
            assert [c["id"] for c in after["tool_calls"]] == [c["id"] for c in before["tool_calls"]]
            for old, new in zip(before["tool_calls"], after["tool_calls"], strict=True):
                args = json.loads(old["function"]["arguments"])
                scrubbed = json.loads(new["function"]["arguments"])
                path = args.get("file_path")
                if isinstance(path, str) and path.startswith(("/home/", "/Users/")):
                    homes += 1
                    assert scrubbed["file_path"].startswith(("/home/user/", "/Users/user/"))
                    assert Path(scrubbed["file_path"]).is_absolute()
        flat = json.dumps([out.messages, out.meta])
        assert "/home/marco" not in flat and "REDACTED:high_entropy" not in flat
        assert out.meta["session_id"] == sample.meta["session_id"]
        assert out.meta["agent_id"] == sample.meta["agent_id"]
        for before, after in zip(sample.messages, out.messages, strict=True):
            for agent in re.findall(r"agentId: \w+", str(before.get("content", ""))):
                agents += 1
                assert agent in after["content"]
    assert homes >= 90  # 93 Read/Write/Edit paths under /home in the fixtures
    assert agents >= 1
