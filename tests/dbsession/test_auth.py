"""Where the client's token comes from: given directly, or a file the trusted side rewrites."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbsession import AuthenticationError, ConfigurationError, DBSession, guard
from dbsession.auth import TokenSource
from tests.servers import RunningServer, running_dbapi


def rewrite(path: Path, content: str, *, bump: float = 1.0) -> None:
    """Rewrite *path* and move its mtime on, as a refreshing writer does (coarse clocks too)."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.touch(mode=0o600)
    path.chmod(0o600)  # a token file must be private to its owner
    path.write_text(content, encoding="utf-8")
    os.utime(path, (before + bump, before + bump))


def test_direct_token_is_stripped() -> None:
    assert TokenSource(token="  abc.def.ghi\n").get() == "abc.def.ghi"
    assert TokenSource().get() is None


def test_token_file_is_re_read_when_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "token"
    rewrite(path, "first-token\n")
    source = TokenSource(token_file=str(path))
    assert source.get() == "first-token"
    rewrite(path, "second-token")
    assert source.get() == "second-token"
    assert source.get() == "second-token"


def test_empty_token_file_means_no_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    rewrite(path, "\n")
    assert TokenSource(token_file=str(path)).get() is None


def test_missing_token_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(ConfigurationError, match="nope"):
        TokenSource(token_file=str(path))
    rewrite(path, "t")
    source = TokenSource(token_file=str(path))
    path.unlink()
    with pytest.raises(ConfigurationError, match="Cannot read the token file"):
        source.get()


def test_repr_never_shows_the_token(tmp_path: Path) -> None:
    assert "s3cret" not in repr(TokenSource(token="s3cret"))
    path = tmp_path / "token"
    rewrite(path, "s3cret")
    assert "s3cret" not in repr(TokenSource(token_file=str(path)))


# -- through a real server ------------------------------------------------------------------------
class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Widget(Base):
    __tablename__ = "widgets"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    engine = guard.exempt(sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('auth') / 'a.sqlite'}"))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Widget(id=1))
        s.commit()
    with running_dbapi(engine, Base.metadata) as server:
        yield server
    engine.dispose()


def test_refreshed_token_file_is_picked_up_by_a_running_session(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "token"
    rewrite(path, server.mint(ttl=-100))  # the token the task started with has expired
    with DBSession(database_access_isolation=True, database_api_host=server.url,
                   token_file=str(path)) as s:
        with pytest.raises(AuthenticationError, match="expired"):
            s.scalars(sa.select(Widget)).all()
        s.rollback()
        rewrite(path, server.mint(ttl=600))  # the trusted side refreshes it
        assert s.scalars(sa.select(Widget.id)).all() == [1]


def test_token_file_from_the_environment(server: RunningServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token"
    rewrite(path, server.mint(ttl=600))
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "true")
    monkeypatch.setenv("DATABASE_API_HOST", server.url)
    monkeypatch.setenv("DATABASE_API_TOKEN_FILE", str(path))
    with DBSession() as s:
        assert s.isolated and s.scalar(sa.select(Widget.id)) == 1
