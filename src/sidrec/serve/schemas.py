"""The JSON contract of `sidrec serve` (pydantic models; FastAPI renders them at /docs).

Types are strict: `"k": "10"` or `"history": "50"` is a 422 naming the field, never a
guess. Item and user ids may be JSON strings or integers; they are compared as strings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr


def _id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected an id: a string (or an integer)")
    return str(value)


Id = Annotated[str, BeforeValidator(_id)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": ["50", "172"], "k": 10, "user_id": "u1",
                      "exclude_seen": True, "options": {"beam": 40}}]})

    history: list[Id] = Field(description="the user's item ids, oldest first ([] = a "
                              "visitor with no history: the most popular items)")
    k: StrictInt = Field(10, description="how many items to return (1..max_k)")
    user_id: Id | None = Field(None, description="a user known from training reads its own "
                               "user token; another id, or none, the anonymous one")
    exclude_seen: StrictBool = Field(False, description="leave out the history's items")
    options: dict[str, Any] = Field(
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

    id: Id
    text: StrictStr = Field(description='e.g. "Title: Brand New Movie; Year: 2026; '
                            'Genres: Drama"')
    vector: list[float] | None = Field(
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
    replica: str = Field(description="host:pid of the process that answered")
    n_items: int
    n_added: int
    n_users: int
    supports_new_items: bool
    inference: dict[str, Any]
    limits: dict[str, int | float | bool | str]


HealthStatus = Literal["ok", "loading", "failed"]
