"""Table references that travel in task kwargs and become quoted SQL identifiers."""

from __future__ import annotations

from typing import Any

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, model_validator


class TableRef(BaseModel):
    """A table: {"schema": "public", "name": "Price History"} or the string "public.t".

    The string form splits at the first dot; names with dots need the object form.
    Names are never interpolated: they become psycopg.sql.Identifier(schema, name).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=True
    )

    schema_: str = Field("public", alias="schema", min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=63)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            schema, dot, name = value.partition(".")
            return {"schema": schema, "name": name} if dot else {"name": value}
        return value

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema_, self.name)

    def __str__(self) -> str:
        return f"{self.schema_}.{self.name}"

    def as_dict(self) -> dict[str, str]:
        return {"schema": self.schema_, "name": self.name}
