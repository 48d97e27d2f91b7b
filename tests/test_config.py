from pathlib import Path

import pytest

from config import ConfigError, load_settings

SPEC_SNIPPET = """\
memory:
  persistent:
    provider: postgres # Required for multi-identity
    connection_string: ${{ secrets.POSTGRES_URL }}
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no formation.yaml of the developer's is picked up


def test_no_configuration_means_sqlite_in_the_local_data_directory():
    settings = load_settings({})
    assert settings.database == "sqlite:///.threadline/threadline.db"
    assert settings.cache == "memory://"
    assert settings.cache_ttl == 3600 and settings.cache_max_entries == 100_000
    assert settings.formation_id == "default"


def test_the_spec_snippet_loads_with_the_secret_from_the_environment(tmp_path):
    path = tmp_path / "formation.yaml"
    path.write_text(SPEC_SNIPPET)
    url = "postgresql://app:hunter2@db.internal:5432/threadline"
    settings = load_settings({"THREADLINE_FORMATION_FILE": str(path), "POSTGRES_URL": url})
    assert settings.database == url
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_formation_yaml_in_the_working_directory_is_found_and_secrets_file_read(tmp_path):
    Path("formation.yaml").write_text("id: acme\n" + SPEC_SNIPPET)
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# comment\nPOSTGRES_URL='postgresql://u@h/db'\n")
    settings = load_settings({"THREADLINE_SECRETS_FILE": str(secrets)})
    assert settings.database == "postgresql://u@h/db"
    assert settings.formation_id == "acme"


def test_a_missing_secret_is_an_error_naming_it():
    Path("formation.yaml").write_text(SPEC_SNIPPET)
    with pytest.raises(ConfigError, match="memory.persistent.connection_string needs secret "
                                          "POSTGRES_URL"):
        load_settings({})


def test_environment_overrides_the_formation_file():
    Path("formation.yaml").write_text(SPEC_SNIPPET)
    settings = load_settings({"POSTGRES_URL": "postgresql://a@b/c",
                              "THREADLINE_DATABASE_URL": "sqlite:///x.db"})
    assert settings.database == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("memory: {persistent: {provider: mysql}}", "provider must be postgres or sqlite"),
        ("memory: {persistent: {provider: postgres}}", "connection_string is required"),
        ("memory: {persistent: {provider: postgres, connection_string: x}}", "postgresql://"),
        ("- a list", "mapping at the top level"),
        ("a: [unclosed", "not valid YAML"),
        ("chanels: {telegram: {token: x}}", "unknown section 'chanels' .did you mean 'channels'"),
        ("server: {admin_kee: x}", "unknown setting server.admin_kee .did you mean 'admin_key'"),
        ("identity: {types: crm}", "identity.types is a list"),
    ],
)
def test_bad_formation_files_are_clear_errors(text, problem):
    Path("formation.yaml").write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_settings({})


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError, match="THREADLINE_CACHE_TTL"):
        load_settings({"THREADLINE_CACHE_TTL": "soon"})


def test_development_generates_and_keeps_an_identity_secret(tmp_path):
    settings = load_settings({"THREADLINE_DATA_DIR": str(tmp_path / "data")})
    first = settings.identity_key()
    assert len(first) >= 32 and settings.identity_key() == first
    assert (tmp_path / "data" / "identity.secret").stat().st_mode & 0o777 == 0o600


def test_production_requires_an_identity_secret():
    with pytest.raises(ConfigError, match="THREADLINE_IDENTITY_SECRET"):
        load_settings({"THREADLINE_ENV": "production"}).identity_key()


def test_the_production_example_loads_with_its_secrets(tmp_path):
    example = Path(__file__).parent.parent / "deploy" / "formation.example.yaml"
    secrets = {name: f"value-{name.lower()}-0123456789abcdef" for name in (
        "IDENTITY_SECRET", "ADMIN_KEY", "CLIENT_KEY", "WEBCHAT_SECRET", "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "IMAP_PASSWORD",
        "SMTP_PASSWORD")}
    secrets.update(POSTGRES_URL="postgresql://u@db/threadline", REDIS_URL="redis://r:6379/0",
                   CREDENTIALS_KEY="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    settings = load_settings({"THREADLINE_FORMATION_FILE": str(example),
                              "THREADLINE_ENV": "production", **secrets})
    assert settings.formation_id == "acme" and settings.cache == "redis://r:6379/0"
    assert set(settings.channels) == {"slack", "telegram", "discord"}  # email: enabled: false
    assert settings.identity_key() and settings.credential_key()
    assert "value-slack_bot_token" not in repr(settings)


def test_a_formation_file_may_declare_identifier_types(tmp_path):
    Path("formation.yaml").write_text("identity: {types: [crm]}\n")
    assert load_settings({}).identity_types == ["crm"]
