"""ServeOptions is the single source of `rnncast serve`'s defaults, checks and help (pure logic, no broker)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from models.argtypes import check_number, int_at_least, number, partition_list, positive_float
from pipeline.cli_serve import add_arguments
from pipeline.kafka_config import KafkaSettings
from pipeline.options import COMMIT_INTERVALS, STATE_SHARDS_BY_RUNNER, ServeOptions, default_state_shards

KAFKA = KafkaSettings(bootstrap="127.0.0.1:1")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(["--artifact", "model", *argv])


def test_the_command_line_and_code_share_defaults() -> None:
    from_cli = ServeOptions.from_args(parse(), KAFKA)
    in_code = ServeOptions(artifact="model", kafka=KAFKA, state_shards=default_state_shards(None))
    assert from_cli == in_code
    for item in fields(ServeOptions):
        if "flag" in item.metadata and item.name not in ("artifact", "state_shards"):
            assert getattr(parse(), item.name) == item.default, item.name


@pytest.mark.parametrize(
    ("flag", "field", "value", "message"),
    [
        ("--max-future", "max_future", "0", "--max-future must be > 0, got 0"),
        ("--topic-partitions", "topic_partitions", "0", "--topic-partitions must be >= 1, got 0"),
        ("--commit-interval", "commit_interval", "-1", "--commit-interval must be > 0, got -1"),
        ("--state-ttl", "state_ttl", "inf", "--state-ttl must be a finite number, got inf"),
        ("--metrics-port", "metrics_port", "-5", "--metrics-port must be >= 0, got -5"),
    ],
)
def test_a_bad_value_gets_the_same_words_from_the_parser_and_from_code(flag, field, value, message) -> None:
    with pytest.raises(argparse.ArgumentError) as cli_error:
        parse(flag, value)
    assert message.split(" ", 1)[1] in str(cli_error.value) and flag in str(cli_error.value)
    with pytest.raises(ValueError, match=message):
        ServeOptions(
            artifact="model", kafka=KAFKA, **{field: float(value) if "." in value or value == "inf" else int(value)}
        )


def test_choices_and_cross_field_rules_are_checked_in_code_too() -> None:
    with pytest.raises(ValueError, match="--guarantee must be one of"):
        ServeOptions(artifact="model", kafka=KAFKA, guarantee="at-most-once")
    with pytest.raises(ValueError, match="must differ"):
        ServeOptions(artifact="model", kafka=KAFKA, output_topic="readings")


def test_commit_interval_defaults_by_guarantee_and_shards_by_runner() -> None:
    for guarantee, interval in COMMIT_INTERVALS.items():
        assert ServeOptions.from_args(parse("--guarantee", guarantee), KAFKA).commit_interval == interval
    assert ServeOptions.from_args(parse("--commit-interval", "2"), KAFKA).commit_interval == 2.0
    local, distributed = STATE_SHARDS_BY_RUNNER.values()
    assert ServeOptions.from_args(parse(), KAFKA).state_shards == local
    assert ServeOptions.from_args(parse(), KAFKA, runner="FlinkRunner").state_shards == distributed
    assert ServeOptions.from_args(parse("--state-shards", "3"), KAFKA, runner="FlinkRunner").state_shards == 3


def test_shared_argument_types() -> None:
    assert check_number(1, 1) is None and "must be > 0" in check_number(0, 0, strictly=True)
    assert check_number(True) == "expected a number, got True"
    assert number(int, 2)("3") == 3 and int_at_least(0)("0") == 0 and positive_float("0.5") == 0.5
    for parser, text in (
        (int_at_least(1), "0"),
        (int_at_least(1), "1.5"),
        (positive_float, "0"),
        (positive_float, "nan"),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            parser(text)
    assert partition_list("0,2,5-7") == (0, 2, 5, 6, 7)
    with pytest.raises(argparse.ArgumentTypeError, match="expected partition numbers"):
        partition_list("3-1")
