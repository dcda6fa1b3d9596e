"""nox sessions: unit tests per distribution, integration per backend, lint, demo, bench.

    nox -s core            unit tests of flowcraft-core (no servers)
    nox -s "unit(redis)"   unit tests of one backend package
    nox -s "integration(rq)"  the contract suite and end-to-end tests against a real server
    nox -s lint            ruff + mypy strict on every distribution
    nox -s demo            the README's demo
    nox -s bench -- --backend sqlite --workers 2 --runs 500
    nox -s chaos -- --backend sqlite --runs 200 --seconds 40   (rq/sqs: add --option redis_url=... etc.)
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
INTEGRATION = {"rq": ("redis", "rq"), "sqs": ("sqs",), "azure": ("redis", "azure"), "kafka": ("redis", "kafka"),
               "rabbitmq": ("redis", "rabbitmq")}
#: the servers scripts/install-servers.sh installs for a backend's integration tests (default: moto, dynalite); rq's
#: include chromium for the dashboard's browser test (test_dashboard_on_rq)
SERVERS = {"rq": ("redis", "chromium"), "azure": ("azurite", "cosmos", "redis"),
           "kafka": ("kafka", "cassandra", "redis"), "rabbitmq": ("rabbitmq", "postgres", "redis")}
nox.options.sessions = ["lint", "core"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, *packages: str) -> None:
    session.install("-e", "core", *(f"-e{ROOT / 'packages' / p}" for p in packages), "-r", "requirements-test.txt")


@nox.session
def core(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "core/tests", *session.posargs)


@nox.session
@nox.parametrize("package", PACKAGES)
def unit(session: nox.Session, package: str) -> None:
    deps = ("redis", package) if package in ("rq", "azure", "rabbitmq") else (package,)
    _install(session, *deps)
    tests = ROOT / "packages" / package / "tests"
    if tests.exists():
        session.run("pytest", str(tests), *session.posargs)


@nox.session
@nox.parametrize("backend", sorted(INTEGRATION))
def integration(session: nox.Session, backend: str) -> None:
    _install(session, *INTEGRATION[backend])
    session.run("bash", "scripts/install-servers.sh", *SERVERS.get(backend, ("moto", "dynalite")),
                external=True, env={"VENV": session.virtualenv.location})
    session.run("pytest", "tests-integration", "-k", backend, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, *PACKAGES)
    session.run("ruff", "check", ".")
    sources = sorted(str(package) for package in ROOT.glob("packages/*/src/*") if package.is_dir())
    session.run("mypy", "core/src/flowcraft", *sources)


@nox.session
def demo(session: nox.Session) -> None:
    _install(session)
    session.run("flowcraft", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    _install(session, *PACKAGES)
    session.install("celery[redis]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos harness (python -m flowcraft.chaos): worker processes SIGKILLed at random, every run checked."""
    _install(session, *PACKAGES)
    session.run("python", "-m", "flowcraft.chaos", *(session.posargs or ["--backend", "sqlite"]))
