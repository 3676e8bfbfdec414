"""The JSON contract of `sidrec serve` (pydantic models; FastAPI renders them at /docs).

Types are strict: `"k": "10"` or `"history": "50"` is a 422 naming the field, never a
guess. Item and user ids may be JSON strings or integers; they are compared as strings,
in NFC, and follow the rules of `sidrec.serve.rules` (a value that breaks them: 400).
The limits of the server's settings (k, history, rows of a batch or an add) are written
into the schema when the app is made (`contract`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    WithJsonSchema,
)

from sidrec.serve import rules

_INTEGER_ID = {"type": "integer", "description": "an integer id reads as its decimal string"}

Id = Annotated[str, BeforeValidator(rules.lookup_id), WithJsonSchema(
    {"anyOf": [{"type": "string", "minLength": 1}, _INTEGER_ID]})]
NewId = Annotated[str, BeforeValidator(rules.new_id), WithJsonSchema(
    {"anyOf": [{"type": "string", "minLength": 1, "maxLength": rules.MAX_ID_CHARS,
                "pattern": rules.NEW_ID_PATTERN},
               {**_INTEGER_ID, "minimum": -(2**63), "maximum": 2**63 - 1}],
     "description": f"at most {rules.MAX_ID_CHARS} characters, no control or bidi "
     "characters, no spaces at its ends; stored in NFC"})]
PathId = Annotated[str, AfterValidator(rules.lookup_id),
                   WithJsonSchema({"type": "string", "minLength": 1})]
ItemText = Annotated[StrictStr, AfterValidator(rules.item_text),
                     WithJsonSchema({"type": "string", "pattern": rules.TEXT_PATTERN})]
OptionKey = Annotated[str, AfterValidator(rules.option_key)]
Integer = Annotated[int, BeforeValidator(rules.integral), WithJsonSchema({"type": "integer"})]
VectorValue = Annotated[float, Field(ge=-rules.MAX_VECTOR_VALUE, le=rules.MAX_VECTOR_VALUE)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": ["50", "172"], "k": 10, "user_id": "u1",
                      "exclude_seen": True, "options": {"beam": 40}}]})

    history: list[Id] = Field(description="the user's item ids, oldest first ([] = a "
                              "visitor with no history: the most popular items)")
    k: Integer = Field(10, description="how many items to return (1..max_k)")
    user_id: Id | None = Field(None, description="a user known from training reads its own "
                               "user token; another id, or none, the anonymous one")
    exclude_seen: StrictBool = Field(False, description="leave out the history's items")
    options: dict[OptionKey, Any] = Field(
        default_factory=dict, description="inference settings for this request, e.g. "
        '{"beam": 40, "mode": "dense"} (GET /v1/info lists the model\'s)')
    on_unknown: Literal["error", "skip"] | None = Field(
        None, description="an unknown history item id: 400 (error) or ignored (skip); "
        "default: the server's setting")


class RecommendedItem(BaseModel):
    id: str
    score: float
    title: str
    cold: bool = Field(description="not seen in training (a held-out or newly added item)")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    model: str
    took_ms: float = Field(description="server time for this request, queueing included")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest]


class BatchResponse(BaseModel):
    results: list[RecommendResponse] = Field(description="one per request, in order")


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: NewId
    text: ItemText = Field(description='e.g. "Title: Brand New Movie; Year: 2026; '
                           'Genres: Drama"')
    vector: list[VectorValue] | None = Field(
        None, description="the item's own vector, from the encoder that made the run's "
        "(required when the run was embedded with `sidrec embed --vectors`)")


class AddResponse(BaseModel):
    added: list[str]
    n_items: int = Field(description="catalogue size after the add")


class ItemInfo(BaseModel):
    id: str
    title: str
    text: str
    cold: bool
    added: bool = Field(description="added after training (POST /v1/items)")


class SearchResponse(BaseModel):
    items: list[ItemInfo]


class ErrorResponse(BaseModel):
    error: str = Field(description="one line saying what is wrong")
    field: str | None = Field(None, description="the request field at fault, e.g. history[2]")


class Info(BaseModel):
    model: str
    replica: str = Field(description="an opaque id of the server process that answered "
                         "(its log names its host and pid)")
    n_items: int
    n_added: int
    n_users: int
    supports_new_items: bool
    inference: dict[str, Any]
    limits: dict[str, int | float | bool | str]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "restarting", "failed"]
    model: str | None = None
    n_items: int | None = None
    error: str | None = Field(None, description="why no model answers (no server paths: "
                              "the log has the details)")

