"""PostgreSQL's part of the SQL layer: schemes, catalogue, schema lock, error classes."""

from __future__ import annotations

from typing import ClassVar

from ..sql._dialect import Dialect, ErrorKind

__all__ = ["PostgresDialect"]


class PostgresDialect(Dialect):
    name: ClassVar[str] = "postgres"
    title: ClassVar[str] = "PostgreSQL"
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    default_port: ClassVar[int] = 5432
    env_var: ClassVar[str] = "STATESTREAM_POSTGRES_URL"
    extra: ClassVar[str] = "postgres"
    paramstyle: ClassVar[str] = "dollar"
    max_identifier: ClassVar[int] = 63

    def columns_query(self) -> str:
        return (
            "SELECT table_name::text, column_name::text FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY($1::text[])"
        )

    def lock_statement(self) -> str:
        return "SELECT pg_advisory_lock($1::bigint)"

    def unlock_statement(self) -> str:
        return "SELECT pg_advisory_unlock($1::bigint)"

    def classify(self, exc: BaseException) -> ErrorKind:
        import asyncpg

        if isinstance(
            exc,
            OSError
            | TimeoutError
            | asyncpg.PostgresConnectionError
            | asyncpg.ConnectionDoesNotExistError
            | asyncpg.CannotConnectNowError
            | asyncpg.AdminShutdownError
            | asyncpg.CrashShutdownError
            | asyncpg.TooManyConnectionsError,
        ):
            return ErrorKind.CONNECTION
        if isinstance(exc, asyncpg.InterfaceError) and (
            "closed" in str(exc) or "connection" in str(exc).lower()
        ):
            return ErrorKind.CONNECTION
        if isinstance(
            exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
        ):
            return ErrorKind.AUTH
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return ErrorKind.MISSING_DATABASE
        if isinstance(exc, asyncpg.UniqueViolationError):
            return ErrorKind.UNIQUE
        if isinstance(
            exc,
            asyncpg.CharacterNotInRepertoireError
            | asyncpg.UntranslatableCharacterError
            | asyncpg.NumericValueOutOfRangeError
            | asyncpg.ProgramLimitExceededError
            | asyncpg.DataError,
        ):
            return ErrorKind.INVALID_VALUE
        return ErrorKind.OTHER
