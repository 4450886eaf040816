"""Shared schema pieces: the list envelope and the ORM-reading base."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints

T = TypeVar("T")

NameStr = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")
]
"""A display name: 1-128 characters, no control characters."""


class PublicModel(BaseModel):
    """Base of every ``XPublic``: built from an ORM row with ``model_validate(row)``."""

    model_config = ConfigDict(from_attributes=True)


class ListPublic(BaseModel, Generic[T]):
    data: list[T]
    count: int


class Message(BaseModel):
    detail: str


class ErrorPublic(BaseModel):
    """Every error the API raises itself: what went wrong and what to do, plus a stable code."""

    detail: str
    code: str
