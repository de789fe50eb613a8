"""The libraries each broker's kombu transport needs, and the one line that says how to get them.

kombu imports a broker's client library when a connection to it is made (kombu 5.7's Redis
transport also imports ``packaging``): where it is missing, every broker step of the package
-- ``celery bugsnag status`` and ``flush``, the delivery task, ``bugsnag-celery demo`` --
fails with the same :class:`BrokerLibraryMissing`, an ``ImportError`` whose text is one
line naming the library and the package's extra that installs it (``pip install
'bugsnag-celery[redis]'``), never the broker's URL (it may hold a password). Which transport
an app uses is read off its configuration, without kombu: building a kombu connection
already imports the transport.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["BrokerLibraryMissing", "EXTRAS", "transport_alias", "library_missing"]


class Extra(NamedTuple):
    """The package's extra for a broker, and the modules its kombu transport imports."""

    name: str
    modules: tuple[str, ...]


_REDIS = Extra("redis", ("redis", "packaging"))
_SQS = Extra("sqs", ("boto3", "botocore", "urllib3", "pycurl"))
_RABBITMQ = Extra("rabbitmq", ("amqp",))

#: kombu's transport aliases -> the extra of ``pyproject.toml`` that brings their libraries.
EXTRAS: dict[str, Extra] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "sentinel": _REDIS,
    "sqs": _SQS,
    "amqp": _RABBITMQ,
    "amqps": _RABBITMQ,
    "pyamqp": _RABBITMQ,
}

#: kombu's transport modules -> their alias (an app may name the class, not the alias).
_MODULES = {
    "kombu.transport.redis": "redis",
    "kombu.transport.SQS": "sqs",
    "kombu.transport.pyamqp": "amqp",
}


class BrokerLibraryMissing(ImportError):
    """A library the app's broker transport needs is not installed; the text says which, and
    how to install it (one line)."""


def transport_alias(app: Celery, write: bool = True) -> str:
    """The kombu transport *app* connects with (``redis``, ``sqs``, ``amqp``...), read off its
    configuration without importing it: ``broker_transport``, else the broker URL's scheme."""
    conf = app.conf
    transport = conf.broker_transport
    if transport and not isinstance(transport, str):  # a class
        transport = f"{transport.__module__}:{transport.__name__}"
    if not transport:
        url = (conf.broker_write_url if write else conf.broker_read_url) or conf.broker_url or "amqp://"
        if isinstance(url, (list, tuple)):
            url = url[0] if url else "amqp://"
        url = str(url).split(";", 1)[0]
        transport = url.split("://", 1)[0] if "://" in url else "amqp"
        transport = transport.split("+", 1)[0]  # sqla+postgresql://... is kombu's sqla
    alias = str(transport)
    return _MODULES.get(alias.split(":", 1)[0], alias).lower()


def _needed(extra: Extra) -> list[str]:
    """The extra's modules that the installed kombu's transport imports on this platform."""
    needed = list(extra.modules)
    if "packaging" in needed and _kombu_version() < (5, 7):
        needed.remove("packaging")  # kombu 5.7's Redis transport is the first to import it
    if "pycurl" in needed and (sys.platform == "win32" or platform.python_implementation() != "CPython"):
        needed.remove("pycurl")  # as kombu's sqs extra says
    return needed


def _kombu_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(part) for part in version("kombu").split(".")[:2])
    except Exception:
        return (0,)


def _not_installed(modules: list[str]) -> list[str]:
    missing = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    return missing


def library_missing(app: Celery, exc: BaseException, write: bool = True) -> BrokerLibraryMissing | None:
    """The one-line error for *exc*, raised while *app*'s broker transport was loaded or used;
    None where *exc* is no missing library: neither an ``ImportError`` nor an ``AttributeError``
    with a library of the transport's extra missing (kombu 5.7's Redis transport fails on
    ``None.Redis`` without redis-py)."""
    if isinstance(exc, BrokerLibraryMissing):
        return exc
    if not isinstance(exc, (ImportError, AttributeError)):
        return None
    alias = transport_alias(app, write)
    extra = EXTRAS.get(alias)
    missing = _not_installed(_needed(extra)) if extra is not None else []
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if name and name.split(".", 1)[0] not in missing:
        missing.insert(0, name.split(".", 1)[0])  # what Python could not find, first
    if not missing and not isinstance(exc, ImportError):
        return None
    if missing:
        names = " and ".join(repr(m) for m in missing)
        what = f"needs the Python {'library' if len(missing) == 1 else 'libraries'} {names}"
        what += ", not installed here"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        what = f"cannot be loaded ({type(exc).__name__}: {first})"
    if extra is not None:
        fix = f"pip install 'bugsnag-celery[{extra.name}]'"
    elif missing:
        fix = "pip install " + " ".join(missing)
    else:
        fix = "install what kombu's transport needs"
    return BrokerLibraryMissing(f"the broker's {alias} transport {what}: {fix}")
