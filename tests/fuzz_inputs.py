"""The inputs tests/test_fuzz.py feeds each parser: valid records, plans, configs, TOML
files, URLs, arguments and ids, damaged in the ways that reach their validators, and
arbitrary values."""

from __future__ import annotations

import base64
import json
from typing import Any

from fuzz_helpers import SEALED, MemoryStore, damaged, json_values, mutations
from hypothesis import strategies as st

from bbp_dist_resume import CheckpointConfig
from bbp_dist_resume.repository.manifest import ChunkRef, PartRef, record_key
from bbp_dist_resume.repository.meta import CheckpointMeta

# -- commit records, plans, configs and URLs, each a valid value damaged -----------------


def manifest_doc(sizes: list[int], inline: bool) -> dict[str, Any]:
    chunks = tuple(ChunkRef(id=f"{i:064x}", size=s) for i, s in enumerate(sizes, 1))
    parts = {"state": PartRef(size=2, inline="aGk=") if inline else PartRef(size=0)}
    if sizes:
        parts["blob"] = PartRef(size=sum(sizes), chunks=chunks)
    meta = CheckpointMeta(
        operation_id="op",
        worker_id="w0",
        seq=3,
        owner_token="a" * 32,
        fence=2,
        stage="scan",
        custom_metadata={"k": "v"},
        consumed={"c": 1},
        produced={"d": 2},
        epoch=1,
    )
    return json.loads(meta.manifest(parts, write_id="b" * 32).to_bytes())  # type: ignore[no-any-return]


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_bodies() -> st.SearchStrategy[bytes]:
    """Commit record bodies: valid manifests damaged at the JSON level (re-encoded
    canonically, so the damage reaches the validator), arbitrary JSON, arbitrary bytes."""
    valid = st.builds(manifest_doc, st.lists(st.integers(1, 1 << 24), max_size=3), st.booleans())
    damaged_docs = valid.flatmap(damaged)
    return (
        st.builds(canonical, damaged_docs)
        | st.builds(lambda d: json.dumps(d).encode(), damaged_docs)
        | st.builds(lambda d: json.dumps(d).encode(), json_values())
        | st.binary(max_size=300)
    )


VALID_PLAN: dict[str, Any] = {
    "version": 1,
    "mode": "last",
    "entries": {
        "w0": {
            "checkpoint_id": "op/w0/2",
            "seq": 2,
            "reason": "latest",
            "replay_from": {"c": 3},
            "rollback": False,
        },
        "w1": {
            "checkpoint_id": None,
            "seq": None,
            "reason": "initial",
            "replay_from": {},
            "rollback": True,
        },
    },
    "channels": {"c": ["w0", 5]},
    "quarantined": {"op/w0/1": "crashed 3 times"},
    "attempts": {"op/w0/2": 1},
    "counted": {"w0": 4},
    "relaunched": ["w0"],
}


def plan_bodies() -> st.SearchStrategy[Any]:
    """Resume plan bodies: the valid one damaged, and arbitrary JSON."""
    return damaged(VALID_PLAN) | json_values()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return json.dumps(str(value))


def toml_texts() -> st.SearchStrategy[str]:
    """TOML files: fields with values of any type (top level or under [checkpoint]),
    unknown keys, and text that is not TOML at all."""
    keys = st.sampled_from([*CheckpointConfig.model_fields, "self", "checkpoint"]) | st.text(
        "abc_", min_size=1, max_size=6
    )
    values = json_values().filter(lambda v: v is not None) | st.sampled_from(
        ["PT5M", "300", "redis://:pw@h:1/0", "sqlite:x.db", "s3://bucket", "file:x", ""]
    )
    lines = st.lists(
        st.builds(lambda k, v: f"{json.dumps(k)} = {_toml_value(v)}", keys, values), max_size=5
    )
    table = st.sampled_from(["", "[checkpoint]\n", "checkpoint = 3\n", "[other]\n"])
    return st.builds(lambda t, ls: t + "\n".join(ls), table, lines) | st.text(max_size=80)


def url_texts() -> st.SearchStrategy[str]:
    """URL-ish text: known schemes, hosts, ports, paths, queries and fragments, with
    brackets, percent escapes, credentials and NULs mixed in."""
    scheme = st.sampled_from(
        [
            "file:",
            "file://",
            "file:///",
            "s3://",
            "S3://",
            "redis://",
            "rediss://",
            "redis+cluster://",
            "sqlite:",
            "sqlite://",
            "sqlite:///",
            "http://",
            "",
        ]
    )
    host = st.sampled_from(
        [
            "",
            "bucket",
            "my-bucket.x",
            "h",
            "127.0.0.1",
            "[::1]",
            "[",
            "]",
            "localhost",
            ":pw@h",
            "u:p@ss@h",
            "%00",
            "a..b",
            "-x",
        ]
    ) | st.text(max_size=10)
    port = st.sampled_from(["", ":6379", ":0", ":99999", ":x", ":-1", ":"])
    path = st.sampled_from(
        ["", "/", "/0", "/x/y", "/../..", "/%2e%2e/k", "/a%00", "/1/2"]
    ) | st.text(max_size=10)
    query = st.sampled_from(
        [
            "",
            "?endpoint_url=http://h:1",
            "?region=",
            "?max_attempts=1e9",
            "?max_attempts=5",
            "?connect_timeout=nan",
            "?read_timeout=inf",
            "?fast_get=maybe",
            "?x=1&x=2",
            "?endpoint_url=http://[",
            "?checksum=when_required",
            "?payload_signing=true",
        ]
    ) | st.text(max_size=12).map(lambda q: "?" + q)
    fragment = st.sampled_from(["", "#f"])
    return st.builds(lambda *p: "".join(p), scheme, host, port, path, query, fragment) | st.text(
        max_size=40
    )


# -- what each target of tests/test_fuzz.py draws ---------------------------------------

headers = st.builds(
    lambda fmt, flags, key_id, nonce: b"BBPO" + bytes([fmt, flags]) + key_id + nonce,
    st.sampled_from([1, 0, 2, 255]),
    st.integers(0, 255),
    st.sampled_from([bytes(8), SEALED.ring.writer.seal.key_id]) | st.binary(min_size=8, max_size=8),
    st.sampled_from([bytes(12)]) | st.binary(min_size=12, max_size=12),
)


any_blobs = st.binary(max_size=2048) | st.builds(bytes.__add__, headers, st.binary(max_size=2048))


decode_cases = st.tuples(any_blobs, st.integers(0, 1 << 16), st.booleans(), st.booleans())


chunk_cases = st.tuples(
    st.binary(min_size=1, max_size=4096) | st.builds(lambda n: b"abc," * n, st.integers(1, 3000)),
    st.sampled_from([None, 1, 3]),
    st.booleans(),
    mutations(),
    st.sampled_from([0, 0, 0, -1, 1, 1000]),
)


bomb_cases = st.tuples(st.integers(1, 1 << 16), st.integers(2, 2000), st.booleans())


KEY = record_key("op", "w0", 3)


record_cases = st.tuples(
    record_bodies(), st.booleans(), st.sampled_from([None, 3]), st.sampled_from([KEY])
)


key_object_cases = st.tuples(
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.fixed_dictionaries(
            {},
            optional={
                "version": st.sampled_from([1, 2, "1"]) | json_values(),
                "key_id": st.sampled_from(["00" * 8, "0011223344556677"]) | st.text(max_size=20),
                "created_at": st.text(max_size=30) | json_values(),
                "wrapped": st.builds(lambda b: base64.b64encode(b).decode(), st.binary(max_size=80))
                | st.text(max_size=80),
            },
        ),
    )
    | st.binary(max_size=200),
    st.sampled_from(["0011223344556677", "00" * 8]),
)


store_config_cases = st.builds(lambda d: json.dumps(d).encode(), MemoryStore.config_dicts())


FIELDS = sorted(CheckpointConfig.model_fields)


config_values = (
    json_values()
    | st.sampled_from(["PT5M", "P1D", "1e400", "nan", "-inf", "0", "300", "redis://h:1/0"])
    | st.sampled_from(["s3://bucket/p", "file:x", "sqlite:x.db", "hybrid", "fine", ""])
)


config_keys = st.sampled_from([*FIELDS, "self", "path", "env", "data", "__class__"]) | st.text(
    max_size=12
)


env_cases = st.dictionaries(
    st.builds(lambda f: "BBP_" + f.upper(), st.sampled_from([*FIELDS, "x", "config", "fault"]))
    | st.text(max_size=10),
    st.text(max_size=20) | config_values.filter(lambda v: isinstance(v, str)),
    max_size=6,
)


argv_cases = st.lists(
    st.sampled_from(
        [
            "--resume-operation",
            "--resume-mode",
            "--resume-checkpoint",
            "--resume-mode=full",
            "--resume",
            "-",
            "--",
            "op",
            "op/w0/3",
            "last",
            "best",
            "interactive",
            "x/y/1" * 2,
        ]
    )
    | st.text(max_size=30),
    max_size=8,
)


id_cases = (
    st.text(max_size=200)
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,140}", fullmatch=True)
    | st.sampled_from(
        ["..", ".", "a/b", "a\\b", "a\x00", "{a}", "\uff41", "\u0430", ".a", "a" * 129]
    )
    | st.builds(
        lambda a, b, s: f"{a}/{b}/{s}",
        st.text(max_size=8),
        st.text(max_size=8),
        st.sampled_from(["1", "0", "01", "\u0661", "\u00b2", "9" * 5000, "-1", " 1", "1 "]),
    )
    | json_values()
)
