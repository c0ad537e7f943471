"""Hypothesis strategies for action kwargs, derived from each params model's JSON schema.

``valid_kwargs(model)`` follows the schema (types, lengths, patterns, enums, $refs) and
plants hostile strings where free text is allowed; ``invalid_kwargs(model)`` breaks it on
purpose: unknown keys, wrong types, out-of-range values, hostile strings in constrained
fields, missing required keys, arbitrary JSON-like dicts. Both plant secrets (SECRET) where
the audit redaction must catch them: values of secret-named keys and passwords in URLs.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from remediation.params import _TARGET

SECRET = "Zq8fuzzSecretValue"  # never produced by chance; must never reach an audit row
SECRET_URLS = [
    f"postgresql://app:{SECRET}@db.internal:5432/shop",
    f"redis://default:{SECRET}@cache:6379/0",
    f"https://user:{SECRET}@hooks.example.com/notify",
]
SECRET_KEYS = ["password", "api_key", "token", "dsn", "webhook_url", "DB_PASSWORD", "secret"]
HOSTILE = [
    'x"; DROP TABLE y; --',
    "Robert'); DROP TABLE students;--",
    "' OR '1'='1",
    "../../etc/passwd",
    "/etc/shadow",
    "..\\..\\windows\\system32",
    "$(rm -rf /)",
    "`id`",
    "; reboot",
    "%s %(x)s {0} {target}",
    "*",
    "?*",
    "[a-z]*",
    "rem:*",
    "line\nbreak\r\n",
    "tab\there",
    "ünïcødé ☃ 🤖 ﷽",
    "\u202eevil",
    " ",
    "a" * 300,
    "self",
    "celery",
    "docker",
    "postgresql://u:pw@127.0.0.1:5432/postgres",
    *SECRET_URLS,
]
# NUL, lone surrogates, NaN/Infinity and ints past 4,300 digits cannot be stored in a jsonb
# audit row today; test_action_kwargs.py pins that as known bugs. Everything else is fair.
CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # no lone surrogates
TEXT = st.text(CHARS)
HUGE_INTS = st.sampled_from([2**31, 2**63, -(2**63) - 1, 2**64, 10**100, -(10**300), 10**1000])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(HOSTILE),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def schema_of(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A params model's JSON schema and its $defs."""
    schema = model.model_json_schema()
    return schema, schema.get("$defs", {})


def accepts(model: type[BaseModel], kwargs: dict[str, Any]) -> bool:
    """True when the model (exactly as the runner uses it) validates these kwargs."""
    try:
        model.model_validate(kwargs)
    except ValidationError:
        return False
    return True


# --- valid: follow the schema ---------------------------------------------------------------


def case_variants(names: list[str]) -> st.SearchStrategy[str]:
    """One of the names as configured, or in another case (APP, aPp, App)."""
    return st.sampled_from(names).flatmap(
        lambda n: (
            st.sampled_from([n, n.upper(), n.lower(), n.swapcase(), n.title()])
            | st.builds(
                lambda flips: "".join(
                    c.upper() if f else c for c, f in zip(n, flips, strict=False)
                ),
                st.lists(st.booleans(), min_size=len(n), max_size=len(n)),
            )
        )
    )


def targets(configured: list[str], default: str | None = None) -> st.SearchStrategy[str]:
    """Target names: the field's default (some actions take no other), configured ones and
    their case variants, the fixed ones some actions demand, and any well-formed name."""
    known = case_variants(["self", "celery", "docker", "pool", *configured])
    ours = case_variants(configured) if configured else known
    fixed = st.just(default) if default else known
    return st.one_of(fixed, ours, ours, known, st.from_regex(_TARGET, fullmatch=True))


def _string(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "pattern" in spec:
        return st.from_regex(spec["pattern"], fullmatch=True)
    lo, hi = spec.get("minLength", 0), spec.get("maxLength")
    hostile = [h for h in HOSTILE if lo <= len(h) <= (hi if hi is not None else len(h))]
    text = st.text(CHARS, min_size=lo, max_size=hi)
    return st.one_of(text, st.sampled_from(hostile)) if hostile else text


def _number(spec: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    lo, hi = spec.get("minimum"), spec.get("maximum")
    if integer:
        return st.integers(lo, hi)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def from_spec(spec: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that satisfy one JSON-schema node (the subset pydantic emits for params)."""
    if "$ref" in spec:
        ref = defs[spec["$ref"].split("/")[-1]]
        obj = from_spec(ref, defs)
        if ref.get("title") == "TableRef":  # also accepted as "schema.name"
            return obj | st.text(CHARS, min_size=1, max_size=127)
        return obj
    if "anyOf" in spec:
        return st.one_of([from_spec(s, defs) for s in spec["anyOf"]])
    if "const" in spec:
        return st.just(spec["const"])
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    kind = spec.get("type")
    if kind == "string":
        return _string(spec)
    if kind in ("integer", "number"):
        return _number(spec, kind == "integer")
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        item = from_spec(spec.get("items", {}), defs)
        return st.lists(item, min_size=spec.get("minItems", 0), max_size=spec.get("maxItems", 8))
    if kind == "object":
        return _object(spec, defs, [])
    raise AssertionError(f"no strategy for schema node {spec!r}: extend tests/fuzz/strategies.py")


def _is_array(node: dict[str, Any]) -> bool:
    return node.get("type") == "array" or any(
        s.get("type") == "array" for s in node.get("anyOf", [])
    )


def _object(
    spec: dict[str, Any],
    defs: dict[str, Any],
    configured: list[str],
    known: dict[str, list[str]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    props = spec.get("properties", {})
    required = set(spec.get("required", []))

    def field(name: str, node: dict[str, Any]) -> st.SearchStrategy[Any]:
        plain = name == "target" and not ({"const", "enum", "pattern"} & set(node))
        if plain:
            return targets(configured, node.get("default"))
        drawn = from_spec(node, defs)
        if known and name in known:  # configured values and their case variants, often
            values = case_variants(known[name])
            ours = st.lists(values, min_size=1, max_size=3) if _is_array(node) else values
            return st.one_of(ours, ours, drawn)
        return drawn

    return st.fixed_dictionaries(
        {n: field(n, p) for n, p in props.items() if n in required},
        optional={n: field(n, p) for n, p in props.items() if n not in required},
    )


def valid_kwargs(
    model: type[BaseModel], configured: list[str], known: dict[str, list[str]] | None = None
) -> st.SearchStrategy[Any]:
    """Kwargs that follow the model's schema (a model validator may still refuse some);
    with ``known``, fields of those names often carry configured values or case variants."""
    schema, defs = schema_of(model)
    return _object(schema, defs, configured, known)


def oversized(model: type[BaseModel], configured: list[str], limit: int) -> st.SearchStrategy[Any]:
    """Valid-looking kwargs made bigger than limit bytes by one long string (in a field or an
    unknown key), with a secret planted before the cut."""
    return st.builds(
        lambda kwargs, name, extra, secret: {**kwargs, name: "x" * (limit + extra), **secret},
        valid_kwargs(model, configured),
        st.sampled_from([*sorted(schema_of(model)[0].get("properties", {})), "padding"]),
        st.integers(1, 8 * limit),
        planted_secrets(),
    )


# --- invalid: break the schema ----------------------------------------------------------------


_JSON_NAMES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _json_types(spec: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    if "$ref" in spec:
        return {"object", "string"}
    if "anyOf" in spec:
        return set().union(*(_json_types(s, defs) for s in spec["anyOf"]))
    if "const" in spec or "enum" in spec:
        return {_JSON_NAMES[type(v)] for v in [spec.get("const"), *spec.get("enum", [])] if v}
    kind = spec.get("type", "")
    return {"integer", "number"} if kind == "number" else {kind}


_BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.integers() | HUGE_INTS,
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": TEXT | st.sampled_from(HOSTILE),
    "array": st.lists(JSON, max_size=4),
    "object": st.dictionaries(TEXT, JSON, max_size=4),
}


def wrong_type(spec: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A JSON value of a type the field does not take (lax coercion may still accept it)."""
    allowed = _json_types(spec, defs)
    return st.one_of([s for t, s in _BY_TYPE.items() if t not in allowed] or [JSON])


def broken(spec: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value just past (or far past) the field's bounds, or hostile where a pattern rules;
    inside lists and objects, one broken item or member."""
    if "$ref" in spec:
        spec = defs[spec["$ref"].split("/")[-1]]
    options: list[st.SearchStrategy[Any]] = [st.sampled_from(HOSTILE), wrong_type(spec, defs)]
    if "maxLength" in spec:
        options.append(
            st.text(CHARS, min_size=spec["maxLength"] + 1, max_size=spec["maxLength"] + 40)
        )
    if spec.get("minLength", 0) >= 1:
        options.append(st.just(""))
    if spec.get("minItems", 0) >= 1:
        options.append(st.just([]))
    if "maxItems" in spec:
        item = from_spec(spec.get("items", {}), defs)
        options.append(st.lists(item, min_size=spec["maxItems"] + 1, max_size=spec["maxItems"] + 5))
    if "items" in spec:
        item = from_spec(spec["items"], defs)
        one_bad = st.tuples(st.lists(item, max_size=3), broken(spec["items"], defs))
        options.append(one_bad.map(lambda t: [*t[0], t[1]]))
    if "properties" in spec:
        options.append(_object_with_bad_member(spec, defs))
    if "minimum" in spec:
        options.append(st.sampled_from([spec["minimum"] - 1, -(2**63), -(10**300)]))
    if "maximum" in spec:
        options.append(st.sampled_from([spec["maximum"] + 1, 2**63, 10**300]))
    options += [broken(sub, defs) for sub in spec.get("anyOf", []) if sub.get("type") != "null"]
    return st.one_of(options)


@st.composite
def _object_with_bad_member(draw: st.DrawFn, spec: dict[str, Any], defs: dict[str, Any]) -> Any:
    value = dict(draw(_object(spec, defs, [])))
    name = draw(st.sampled_from(sorted(spec["properties"])))
    value[name] = draw(broken(spec["properties"][name], defs))
    return value


def planted_secrets() -> st.SearchStrategy[dict[str, Any]]:
    """Unknown keys whose values the redaction must mask: secret names, passwords in URLs."""
    by_name = st.builds(lambda k, v: {k: v}, st.sampled_from(SECRET_KEYS), st.just(SECRET))
    nested = st.builds(
        lambda k, n, u: {k: {n: SECRET, "url": u}},
        TEXT,
        st.sampled_from(SECRET_KEYS),
        st.sampled_from(SECRET_URLS),
    )
    in_url = st.builds(lambda k, u: {k: [u]}, TEXT, st.sampled_from(SECRET_URLS))
    return st.one_of(by_name, nested, in_url)


def invalid_kwargs(model: type[BaseModel], configured: list[str]) -> st.SearchStrategy[Any]:
    """Kwargs that break the model one way or several (callers skip the ones that pass)."""
    schema, defs = schema_of(model)
    props: dict[str, Any] = schema.get("properties", {})
    names, required = sorted(props), sorted(schema.get("required", []))
    base = valid_kwargs(model, configured)
    unknown = st.dictionaries(TEXT.filter(lambda k: k not in props), JSON, min_size=1)
    wrong = {n: wrong_type(props[n], defs) for n in names}
    bad = {n: broken(props[n], defs) for n in names}
    arbitrary = st.dictionaries(st.sampled_from(names) | TEXT, JSON, max_size=6)

    @st.composite
    def draw_one(draw: st.DrawFn) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(draw(base))
        how = draw(st.sampled_from(["unknown", "type", "range", "missing", "arbitrary"]))
        if how == "unknown":
            kwargs.update(draw(unknown))
        elif how in ("type", "range"):
            name = draw(st.sampled_from(names))
            kwargs[name] = draw((wrong if how == "type" else bad)[name])
        elif how == "missing" and required:
            kwargs.pop(draw(st.sampled_from(required)))
        else:
            kwargs = draw(arbitrary)
        if draw(st.booleans()):
            kwargs.update(draw(planted_secrets()))
        return kwargs

    return draw_one()


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return []


@st.composite
def with_nul(draw: st.DrawFn, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same kwargs with a NUL character inserted into one of their strings."""
    spoiled: Any = copy.deepcopy(kwargs)
    paths = _string_paths(spoiled)
    if not paths:  # only defaults were drawn: the target is a string too
        spoiled["target"], paths = "self", [("target",)]
    *parents, last = draw(st.sampled_from(paths))
    holder = spoiled
    for step in parents:
        holder = holder[step]
    at = draw(st.integers(0, len(holder[last])))
    holder[last] = holder[last][:at] + "\x00" + holder[last][at:]
    return cast(dict[str, Any], spoiled)
