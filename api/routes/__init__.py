"""Routers, one file per resource; ``ROUTERS`` are mounted under ``/api/v1``."""

from fastapi import APIRouter

from api.routes import (
    auth,
    client,
    client_uploads,
    clients,
    federations,
    organizations,
    rounds,
    strategies,
    system,
)

ROUTERS: list[APIRouter] = [
    auth.router,
    organizations.router,
    clients.router,
    clients.tokens,
    federations.router,
    federations.members,
    rounds.rounds,
    rounds.adapters,
    rounds.audit,
    strategies.router,
    system.v1,
    client.router,
    client_uploads.router,
]
