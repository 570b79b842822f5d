"""Checks a create request the way FLORA does (CONTRACT.md §3 and §9), all at once.

Every problem found becomes one ``{field, message}`` entry, and the 400's message joins
them in the spec's ``prompt: Required`` style, so a client sees all its mistakes in one
round trip.  Problems with a technique input are reported under the input's id (as in
the spec's example); problems with the request's shape under a path (``inputs.0.type``).

A media input may also be checked by an ``asset_check`` callback: the emulator uses it to
refuse one of its own asset URLs until that asset is ``ready`` (ASSETS.md §7).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flora_batch import wire
from flora_batch.types import RUN_INPUT_TYPES, RunInput

from .catalog import SlotDef, TechniqueDef
from .problems import ApiProblem, FieldError, invalid

BODY_FIELDS = ("inputs", "mode", "callback_url", "idempotency_key")
INPUT_FIELDS = ("id", "type", "value")
#: Spellings of input types the docs accept besides the spec's enum (CONTRACT.md §3).
TYPE_ALIASES = {
    "image_url": "imageUrl",
    "video_url": "videoUrl",
    "IMAGE_URL": "imageUrl",
    "VIDEO_URL": "videoUrl",
    "TEXT": "text",
}
MAX_KEY_LENGTH = 255

#: Returns why a media URL may not be used as an input (None: it may).
AssetCheck = Callable[[str], str | None]


@dataclass(frozen=True)
class CreateRequest:
    """A create request that passed validation."""

    inputs: tuple[RunInput, ...]
    idempotency_key: str | None = None
    callback_url: str | None = None


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, or a 400 ``invalid_json``."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem("invalid_json") from None


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for ``Expected string, received number``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), "unknown")


def validate_create(
    body: Any,
    technique: TechniqueDef,
    allowed_hosts: tuple[str, ...],
    asset_check: AssetCheck | None = None,
) -> CreateRequest:
    """The checked create request, or a 400 ``input_validation_error`` listing every problem.

    Raises:
        ApiProblem: ``input_validation_error`` with one ``fields`` entry per problem.
    """
    if not isinstance(body, dict):
        raise invalid([FieldError("body", f"Expected object, received {json_type(body)}")])
    errors = unknown_keys("", body, BODY_FIELDS)
    errors += _check_mode(body)
    errors += _check_optional_string(body, "idempotency_key")
    errors += _check_optional_string(body, "callback_url")
    items, item_errors = _input_items(body.get("inputs", _MISSING))
    errors += item_errors
    if not item_errors:
        errors += _check_inputs(items, technique, allowed_hosts, asset_check)
    if errors:
        raise invalid(errors)
    return CreateRequest(items, body.get("idempotency_key"), body.get("callback_url"))


_MISSING = object()


def unknown_keys(prefix: str, data: dict[str, Any], known: tuple[str, ...]) -> list[FieldError]:
    extra = [k for k in data if k not in known]
    if not extra:
        return []
    names = ", ".join(f"'{k}'" for k in extra)
    return [FieldError(prefix or extra[0], f"Unrecognized key(s) in object: {names}")]


def _check_mode(body: dict[str, Any]) -> list[FieldError]:
    mode = body.get("mode", _MISSING)
    if mode is _MISSING:
        return [FieldError("mode", "Required")]
    if mode == "stream":
        return [FieldError("mode", "Streaming is not supported; use 'async'")]
    if mode != "async":
        shown = json.dumps(mode)
        return [FieldError("mode", f"Invalid enum value. Expected 'async', received {shown}")]
    return []


def _check_optional_string(body: dict[str, Any], name: str) -> list[FieldError]:
    value = body.get(name, _MISSING)
    if value is _MISSING:
        return []
    if not isinstance(value, str):
        return [FieldError(name, f"Expected string, received {json_type(value)}")]
    if not value:
        return [FieldError(name, "Must not be empty")]
    if name == "idempotency_key" and len(value) > MAX_KEY_LENGTH:
        return [FieldError(name, f"Must be at most {MAX_KEY_LENGTH} characters")]
    if name == "callback_url" and not value.startswith("https://"):
        return [FieldError(name, "Must be an https:// URL")]
    return []


def _input_items(raw: Any) -> tuple[tuple[RunInput, ...], list[FieldError]]:
    """The ``inputs`` array as ``RunInput`` values, with any shape problems."""
    if raw is _MISSING:
        return (), [FieldError("inputs", "Required")]
    if not isinstance(raw, list):
        return (), [FieldError("inputs", f"Expected array, received {json_type(raw)}")]
    if not raw:
        return (), [FieldError("inputs", "Array must contain at least 1 element(s)")]
    items: list[RunInput] = []
    errors: list[FieldError] = []
    for index, item in enumerate(raw):
        parsed, problems = _input_item(f"inputs.{index}", item)
        errors += problems
        if parsed is not None:
            items.append(parsed)
    return tuple(items), errors


def _input_item(path: str, item: Any) -> tuple[RunInput | None, list[FieldError]]:
    if not isinstance(item, dict):
        return None, [FieldError(path, f"Expected object, received {json_type(item)}")]
    errors = unknown_keys(path, item, INPUT_FIELDS)
    for name in INPUT_FIELDS:
        if name not in item:
            errors.append(FieldError(f"{path}.{name}", "Required"))
        elif not isinstance(item[name], str):
            errors.append(
                FieldError(f"{path}.{name}", f"Expected string, received {json_type(item[name])}")
            )
    if errors:
        return None, errors
    kind = TYPE_ALIASES.get(item["type"], item["type"])
    if kind not in RUN_INPUT_TYPES:
        allowed = " | ".join(f"'{t}'" for t in RUN_INPUT_TYPES)
        message = f"Invalid enum value. Expected {allowed}, received '{item['type']}'"
        return None, [FieldError(f"{path}.type", message)]
    return RunInput(item["id"], kind, item["value"]), []


def _check_inputs(
    items: tuple[RunInput, ...],
    technique: TechniqueDef,
    allowed_hosts: tuple[str, ...],
    asset_check: AssetCheck | None,
) -> list[FieldError]:
    """Each input against the technique's slots, then every required slot present."""
    errors: list[FieldError] = []
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            errors.append(FieldError(item.id, "Duplicate input"))
            continue
        seen.add(item.id)
        slot = technique.input(item.id)
        if slot is None:
            takes = ", ".join(s.id for s in technique.inputs)
            message = f"Unrecognized input for technique {technique.slug} (takes: {takes})"
            errors.append(FieldError(item.id, message))
        else:
            errors += _check_value(item, slot, allowed_hosts, asset_check)
    for slot in technique.inputs:
        if not slot.optional and slot.id not in seen:
            errors.append(FieldError(slot.id, "Required"))
    return errors


def _check_value(
    item: RunInput, slot: SlotDef, allowed_hosts: tuple[str, ...], asset_check: AssetCheck | None
) -> list[FieldError]:
    if item.type != slot.type:
        return [FieldError(item.id, f"Expected {slot.type}, received {item.type}")]
    if not item.value.strip():
        hint = "; omit an optional input instead of sending it empty" if slot.optional else ""
        return [FieldError(item.id, f"Must not be empty{hint}")]
    if slot.is_media:
        reason = wire.check_media_url(item.value, allowed_hosts)
        if reason is None and asset_check is not None:
            reason = asset_check(item.value)
        if reason is not None:
            return [FieldError(item.id, reason[:1].upper() + reason[1:])]
    elif slot.pattern and not re.fullmatch(slot.pattern, item.value.strip()):
        return [FieldError(item.id, f"Invalid format (expected a value like {_example(slot)})")]
    return []


def _example(slot: SlotDef) -> str:
    """An example value for a patterned text slot, taken from its description's ``e.g.``."""
    _, _, tail = slot.description.partition("e.g. ")
    return tail.rstrip(".") or slot.pattern or "?"
