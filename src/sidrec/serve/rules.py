"""What an id and an item text may be over HTTP: the rules the schema states and the
server applies, one definition for both (`schemas` uses them).

    an id        a JSON string or an integer (compared as the string it reads as; 2.0
                 is the integer 2, as in JSON Schema),
                 NFC-normalised on arrival (so an NFC and an NFD "café" are one item),
                 never empty, never holding a lone UTF-16 surrogate (`"\\ud800"`)
    a new id     (`POST /v1/items`) also at most `MAX_ID_CHARS` characters (an integer:
                 a 64-bit one), with no
                 control character (U+0000-001F, U+007F-009F), no bidi control (U+061C,
                 U+200E-200F, U+202A-202E, U+2066-2069: they reorder how an id reads) and
                 no space at either end: an id a client can show, log and fetch back
    a text       at least one character other than a space, no lone surrogate
    a vector     (a new item's own) numbers within +-`MAX_VECTOR_VALUE`, as many as the
                 run's vectors have (the schema says how many once the model is loaded)

A value that breaks them is a 400 naming the field (`http_errors.VALUE_ERRORS`), a value
of the wrong type a 422. The patterns are written so that JSON Schema (ECMA 262) and
Python read them alike; tests/test_serve_contract.py checks they agree with the checks.
"""

from __future__ import annotations

import re
import unicodedata

from pydantic_core import PydanticCustomError

MAX_ID_CHARS = 256
# A new item's own vector: each value at most this large (the tokenizer measures distances
# in float32, where the squares of much larger values overflow).
MAX_VECTOR_VALUE = 1e6

# Python's str.isspace() characters (what str.strip() removes) and the refused ones.
_SPACE = (r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f"
          r"\u205f\u3000")
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_BIDI = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
NEW_ID_PATTERN = (f"^[^{_CONTROL}{_BIDI}{_SPACE}]"
                  f"(?:[^{_CONTROL}{_BIDI}]*[^{_CONTROL}{_BIDI}{_SPACE}])?$")
TEXT_PATTERN = f"[^{_SPACE}]"
_REFUSED = re.compile(f"[{_CONTROL}{_BIDI}]")


def refused(message: str) -> PydanticCustomError:
    """A value the rules refuse: the route answers 400 with `message`."""
    return PydanticCustomError("sidrec_value", message)


def no_surrogate(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise refused(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is "
                      "no character; send UTF-8 text") from None
    return text


def integral(value: object) -> int:
    """An integer, or a number with no fraction (JSON Schema's integer: 2.0 is 2); a
    string or a bool is not one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def lookup_id(value: object) -> str:
    """An id that names an item or a user (history, user_id, a path): NFC, non-empty."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected an id: a string (or an integer)")
    text = no_surrogate(str(value), "the id")
    if not text:
        raise refused("the id is empty")
    return unicodedata.normalize("NFC", text)


def new_id(value: object) -> str:
    """An id for a new item: `lookup_id`'s rules, and the rules of a new id above."""
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise refused(f"the id is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and not -(2**63) <= value < 2**63:
        raise refused(f"the id {value} is past the 64-bit integers; send it as a string")
    text = lookup_id(value)
    if bad := _REFUSED.search(text):
        kind = "a control character" if unicodedata.category(bad[0]) == "Cc" else \
            "a bidi control"
        raise refused(f"the id holds U+{ord(bad[0]):04X}, {kind}; an id may not")
    if text != text.strip():
        raise refused(f"the id {text!r} has spaces at its ends; strip them")
    return text


def item_text(value: str) -> str:
    no_surrogate(value, "the text")
    if not value.strip():
        raise refused("the text is empty; give the item a text")
    return value


def option_key(value: str) -> str:
    return no_surrogate(value, "the option name")
