"""The ``feedback-loop`` command line. Settings are read here, once, and passed down."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import SecretStr, ValidationError

from feedback_loop.errors import ConfigurationError, FeedbackLoopError
from feedback_loop.settings import Settings

#: The reviewer `up` makes when no reviewer_tokens are set.
RUN_REVIEWER = "reviewer"

EPILOG_SETTINGS = """\
Settings come from FEEDBACK_LOOP_* environment variables (FEEDBACK_LOOP_KAFKA_BOOTSTRAP,
FEEDBACK_LOOP_REDIS_URL, FEEDBACK_LOOP_PARTITIONS, ...); flags override them. With no Kafka and
no Redis configured, `up` and `demo` start embedded ones on free loopback ports."""


def say(message: str) -> None:
    """Progress and status lines go to stderr; results to stdout."""
    print(f"feedback-loop: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- argument parsing
#: the settings a command's flag may override, and that flag (the parsers take it from here)
SETTING_FLAGS = {"kafka_bootstrap": "--kafka", "redis_url": "--redis", "topic_prefix": "--topic-prefix",
                 "log_level": "--log-level", "partitions": "--partitions", "data_dir": "--data-dir"}


def _setting_flag(g: Any, name: str, **kwargs: Any) -> None:
    """The flag of setting ``name`` (see :data:`SETTING_FLAGS`) on the parser or group ``g``."""
    g.add_argument(SETTING_FLAGS[name], dest=name, **kwargs)


def _common(p: argparse.ArgumentParser, *, servers: bool = True) -> None:
    g = p.add_argument_group("deployment")
    if servers:
        _setting_flag(g, "kafka_bootstrap", metavar="HOST:PORT",
                      help="Kafka bootstrap address (env FEEDBACK_LOOP_KAFKA_BOOTSTRAP)")
        _setting_flag(g, "redis_url", metavar="URL",
                      help="Redis URL, e.g. redis://localhost:6379/0 (env FEEDBACK_LOOP_REDIS_URL)")
    _setting_flag(g, "topic_prefix", help="prefix of every topic name (env FEEDBACK_LOOP_TOPIC_PREFIX)")
    _setting_flag(g, "log_level", choices=["debug", "info", "warning", "error"],
                  help="log level of the worker (default warning)")


def _local(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedded servers (used when no Kafka/Redis is configured)")
    g.add_argument("--kafka-port", type=int, default=0, help="port of the embedded broker (default: a free one)")
    g.add_argument("--redis-port", type=int, default=0, help="port of the embedded Redis (default: a free one)")
    _setting_flag(g, "partitions", type=int, help="partitions of each created topic (default 8)")
    _setting_flag(g, "data_dir", type=Path, help="where embedded Redis persists and logs go (default ./.feedback-loop/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedback-loop",
        description="Close the loop around ML models in production: join predictions with late "
                    "labels and reviewer verdicts into outcomes, and serve live accuracy.",
        epilog=EPILOG_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("up", help="embedded broker + Redis + worker + web, until Ctrl-C",
                       description="Start everything on this machine and keep it running until Ctrl-C "
                                   "or SIGTERM. Prints 'kafka: HOST:PORT', 'redis: URL' and 'web: URL' "
                                   "once everything answers.",
                       epilog="example: feedback-loop up --web-port 8080 --partitions 4\n\n" + EPILOG_SETTINGS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _local(p)
    p.add_argument("--web-port", type=int, default=8080, help="HTTP port (default 8080; 0 picks a free one)")
    p.add_argument("--web-host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    p = sub.add_parser("worker", help="one Faust worker against the configured Kafka and Redis",
                       description="Run one stream worker (join, metrics) against FEEDBACK_LOOP_KAFKA_BOOTSTRAP "
                                   "and FEEDBACK_LOOP_REDIS_URL. Start as many as there are partitions "
                                   "to scale out; stop with SIGTERM or Ctrl-C.",
                       epilog=EPILOG_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _setting_flag(p, "partitions", type=int, help="partitions of topics this worker creates if missing (default 8)")

    p = sub.add_parser("web", help="serve the HTTP API against the configured Kafka and Redis",
                       description="Serve /healthz, /metrics and /api/models for a running deployment.",
                       epilog=EPILOG_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--web-port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--web-host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")

    p = sub.add_parser("replay", help="publish predictions and labels from a CSV or JSONL file",
                       description="Publish a file of predictions (and labels) with kafka-python. "
                                   "CSV columns: prediction (required), prediction_id, model, model_version, "
                                   "timestamp, label, confidence, score_<class>, tag_<name>; any other column "
                                   "is a feature. JSONL lines: PredictionEvent fields plus optional label "
                                   "and label_timestamp.",
                       epilog="example: feedback-loop replay preds.csv --kafka localhost:9092 "
                              "--model churn --label-delay 100\n\n" + EPILOG_SETTINGS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="a .csv or .jsonl file")
    _common(p)
    p.add_argument("--model", help="model name where the file has none (default: the file's name)")
    p.add_argument("--model-version", default="1", help="model version where the file has none (default 1)")
    p.add_argument("--id-prefix", help="prefix of generated prediction ids (default: the file's name)")
    p.add_argument("--prediction-column", default="prediction", help="column of the predicted value")
    p.add_argument("--label-column", default="label", help="column of the true label")
    p.add_argument("--label-delay", type=int, default=0, help="publish each label this many rows late (default 0)")
    p.add_argument("--interval-seconds", type=float, default=1.0,
                   help="event-time step between rows without a timestamp (default 1)")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default: as fast as possible)")

    p = sub.add_parser("alerts", help="an alert consumer: print, POST to a webhook, or push to Redis",
                       description="Consume drift-alerts and deliver each alert once: printed, POSTed to a "
                                   "webhook (retries with backoff; header Idempotency-Key: <alert_id>), or "
                                   "pushed to a Redis list. Alerts already delivered by this sink are skipped; "
                                   "undeliverable ones are kept in Redis and listed by "
                                   "GET /api/alerts/undeliverable.",
                       epilog="example: feedback-loop alerts --kafka localhost:9092 --redis redis://localhost:6379/0 "
                              "--sink webhook --url https://hooks.example/feedback\n\n" + EPILOG_SETTINGS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--sink", choices=["print", "webhook", "redis"], default="print", help="where alerts go (default print)")
    p.add_argument("--url", help="webhook URL (with --sink webhook)")
    p.add_argument("--redis-key", help="Redis list to push to (with --sink redis; default <namespace>:alerts:inbox)")
    p.add_argument("--json", dest="json_lines", action="store_true", help="print raw JSON lines (with --sink print)")
    p.add_argument("--group-id", default="feedback-loop-alerts",
                   help="consumer group; one per sink (default feedback-loop-alerts)")
    p.add_argument("--sink-name", help="name under which deliveries are remembered; give each of several "
                                       "sinks of one kind its own (default: the sink kind)")

    p = sub.add_parser("models", help="the model registry: list versions, promote or roll back by hand",
                       description="List a model's registry versions and champion, or decide by hand: "
                                   "`promote` makes VERSION (a registry version, or with --external the "
                                   "producer's own model version) the champion, `rollback` restores the previous "
                                   "champion. The decision goes through the model's learner, in order with its "
                                   "outcomes, which announces it on model-updates (ModelUpdate with evidence "
                                   "{\"by\": \"hand\"}); serving handles swap when they see it. The model must "
                                   "have online challengers (FEEDBACK_LOOP_ONLINE_MODELS).",
                       epilog="examples:\n  feedback-loop models list churn\n"
                              "  feedback-loop models promote churn arf-u12000 --reason 'checked offline'\n"
                              "  feedback-loop models rollback churn\n\n" + EPILOG_SETTINGS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("model", help="the producer's model name")
    p.add_argument("version", nargs="?", help="the version to promote (promote only)")
    p.add_argument("--external", action="store_true", help="VERSION is the producer's own model, not in the registry")
    p.add_argument("--reason", default="", help="why, kept in the decision's evidence")

    p = sub.add_parser("reviews", help="feed the Redis review queue from review-queue and outcomes",
                       description="Consume review-queue (ReviewRequests from the routing agents) and outcomes "
                                   "into the Redis review queue that the reviewer page reads. Each request is "
                                   "queued once, highest priority first, within its model's hourly review "
                                   "budget (event time); a full queue evicts its lowest item. A prediction "
                                   "whose ground-truth label arrives leaves the queue, except a suspected "
                                   "label error. Invalid messages go to dead-letters with the reason. Offsets "
                                   "are committed only after Redis has the result, so a restart neither loses "
                                   "nor doubles an item; while Redis is down the consumer waits and retries. "
                                   "Stop with Ctrl-C or SIGTERM.",
                       epilog="example: feedback-loop reviews --kafka localhost:9092 --redis redis://localhost:6379/0\n\n"
                              "The rules come from FEEDBACK_LOOP_REVIEW_BUDGET_PER_HOUR (default 60), "
                              "FEEDBACK_LOOP_REVIEW_BUDGETS (per model, e.g. '{\"churn\": 20}'), "
                              "FEEDBACK_LOOP_REVIEW_BUDGET_BURST, FEEDBACK_LOOP_REVIEW_QUEUE_CAPACITY, "
                              "FEEDBACK_LOOP_REVIEW_LEASE_SECONDS and FEEDBACK_LOOP_REVIEW_DEDUP_SECONDS.\n\n"
                              + EPILOG_SETTINGS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--group-id", help="Kafka consumer group (default <app id>-reviews, i.e. feedback-loop-reviews)")
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")

    p = sub.add_parser("schema", help="print the JSON Schemas of all events",
                       description="Print the JSON Schema of every topic's values as one JSON object "
                                   "keyed by topic, or of one topic with --topic.")
    p.add_argument("--topic", help="only this topic (e.g. predictions)")

    p = sub.add_parser("demo", help="the Elec2 stream through the live loop, on this machine",
                       description="Start the embedded servers and a worker, replay the Elec2 electricity "
                                   "stream (45,312 half-hours with real drift) with delayed labels through "
                                   "the loop, show progress and print the live metrics at the end.",
                       epilog=EPILOG_SETTINGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _local(p)
    p.add_argument("--label-delay", type=int, default=48, help="rows (half-hours) before a label arrives (default 48)")
    p.add_argument("--pretrain", type=int, default=5000, help="rows the frozen model trains on (default 5000)")
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--review-budget", type=float, default=0.05,
                   help="share of each model's predictions the reviewers may answer (default 0.05)")
    p.add_argument("--reviewers", type=int, default=2, help="simulated reviewers (default 2)")
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = ".".join(map(str, first["loc"]))
        # (the flag is named only where this command has one)
        flag = f" or {SETTING_FLAGS[name]}" if name in SETTING_FLAGS and hasattr(args, name) else ""
        raise ConfigurationError(f"setting {name} (FEEDBACK_LOOP_{name.upper()}{flag}): {first['msg']}") from None


# ---------------------------------------------------------------------- commands
class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived. It is raised wherever the interpreter is when the signal lands,
    so it takes Ctrl-C's path: asyncio (its transports, callbacks and tasks) re-raises a
    ``KeyboardInterrupt`` where it would log and swallow any other exception."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def _handle_stop_signals() -> None:
    """SIGINT and SIGTERM stop the stack, even when the parent ignored them (a test runner, a
    supervisor, a background job): ``up`` is not deaf to Ctrl-C and ``kill -INT``. (A blocked
    signal is unblocked for every command in :func:`main`.)"""
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _local_stack(settings: Settings, args: argparse.Namespace, workers: int = 1) -> Any:
    from feedback_loop.stack import LocalStack

    return LocalStack(settings, env=dict(os.environ), workers=workers, kafka_port=args.kafka_port,
                      redis_port=args.redis_port, say=say)


def _supervised(settings: Settings, args: argparse.Namespace, body: Callable[[Any, Settings], None],
                workers: int = 1) -> int:
    """Run ``body(stack, resolved)`` with the stack up; stop everything however it ends."""
    _handle_stop_signals()
    stack = _local_stack(settings, args, workers)
    try:
        resolved = stack.start()
        body(stack, resolved)
        return 0
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        _ignore_signals()
        say("stopping ...")
        stack.stop()
        say("stopped")


async def _serve(stack: Any, settings: Settings, host: str, port: int) -> None:
    from feedback_loop.web import start_web

    try:
        runner, bound = await start_web(settings, host, port)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}; "
                                 "pick another --web-port (0 picks a free one)") from None
    try:
        print(f"kafka: {settings.kafka_bootstrap}", flush=True)
        print(f"redis: {settings.redis_url}", flush=True)
        print(f"web: http://{host}:{bound}", flush=True)
        print(f"review: http://{host}:{bound}/review", flush=True)
        if list(settings.reviewer_tokens) == [RUN_REVIEWER]:
            token = settings.reviewer_tokens[RUN_REVIEWER].get_secret_value()
            print(f"reviewer token (this run only; set FEEDBACK_LOOP_REVIEWER_TOKENS for your own): {token}",
                  flush=True)
        say("running; Ctrl-C to stop")
        while True:
            stack.check_workers()
            await asyncio.sleep(0.5)
    finally:
        # (bounded: aiohttp would wait up to a minute for open connections to finish)
        try:
            await asyncio.wait_for(runner.cleanup(), settings.shutdown_timeout_seconds)
        except asyncio.TimeoutError:
            say("the web server did not close within the shutdown timeout; stopping anyway")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from feedback_loop.runtime.processes import port_is_free

    if not 0 <= args.web_port <= 65535:
        raise ConfigurationError(f"--web-port must be between 0 and 65535, got {args.web_port}")
    if args.web_port and not port_is_free(args.web_host, args.web_port):
        raise ConfigurationError(f"port {args.web_port} on {args.web_host} is taken; "
                                 "pick another --web-port (0 picks a free one)")
    if not settings.reviewer_tokens:
        settings = settings.model_copy(update={
            "reviewer_tokens": {RUN_REVIEWER: SecretStr(secrets.token_urlsafe(18))}})
    return _supervised(settings, args, lambda stack, resolved: asyncio.run(
        _serve(stack, resolved, args.web_host, args.web_port)), workers=args.workers)


def _require_servers(settings: Settings, command: str) -> None:
    if not settings.kafka_bootstrap or not settings.redis_url:
        missing = " and ".join(n for n, v in (("--kafka (FEEDBACK_LOOP_KAFKA_BOOTSTRAP)", settings.kafka_bootstrap),
                                              ("--redis (FEEDBACK_LOOP_REDIS_URL)", settings.redis_url)) if not v)
        raise ConfigurationError(
            f"`{command}` needs {missing}; for everything on this machine run `feedback-loop up`")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    _require_servers(settings, "worker")
    from streams.worker import run_worker

    run_worker(settings)
    return 0


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    _require_servers(settings, "web")
    from aiohttp import web

    from feedback_loop.runtime.event_loop import use_event_loop
    from feedback_loop.web import create_web_app

    use_event_loop(settings.event_loop)
    web.run_app(create_web_app(settings), host=args.web_host, port=args.web_port, print=None)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        raise ConfigurationError("`replay` needs --kafka HOST:PORT (or FEEDBACK_LOOP_KAFKA_BOOTSTRAP); "
                                 "`feedback-loop up` prints the address of a local one")
    from feedback_loop.replay import ReplayOptions, events_from_rows, publish, read_file, schedule

    stem = args.file.stem
    opts = ReplayOptions(model=args.model or stem, model_version=args.model_version,
                         id_prefix=args.id_prefix or stem, prediction_column=args.prediction_column,
                         label_column=args.label_column, interval_seconds=args.interval_seconds)
    events = list(events_from_rows(read_file(args.file), opts))  # validate everything before sending
    say(f"{len(events):,} predictions, {sum(e.label is not None for e in events):,} labels validated")
    from feedback_loop.kafka_security import kafka_python_kwargs

    stats = publish(settings.kafka_bootstrap, settings.topics, schedule(events, args.label_delay),
                    rate=args.rate, progress=lambda s: say(
                        f"sent {s.predictions:,}/{len(events):,} predictions, {s.labels:,} labels"),
                    security=kafka_python_kwargs(settings))
    print(json.dumps({"predictions": stats.predictions, "labels": stats.labels,
                      "seconds": round(stats.seconds, 3)}))
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    _require_servers(settings, "alerts")
    from consumers.alerts import run_alerts

    return run_alerts(settings, sink=args.sink, url=args.url, redis_key=args.redis_key,
                      json_lines=args.json_lines, group_id=args.group_id, sink_name=args.sink_name)


def cmd_reviews(args: argparse.Namespace, settings: Settings) -> int:
    _require_servers(settings, "reviews")
    from consumers.reviews import run_reviews

    run_reviews(settings, max_seconds=args.max_seconds, group_id=args.group_id, say=say)
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    _require_servers(settings, "models")
    from feedback_loop.model_commands import run_models

    return run_models(settings, args.action, args.model, args.version, external=args.external,
                      reason=args.reason)


def cmd_schema(args: argparse.Namespace, settings: Settings | None) -> int:
    from feedback_loop.events import json_schemas

    schemas = json_schemas()
    if args.topic:
        if args.topic not in schemas:
            raise ConfigurationError(f"unknown topic {args.topic!r}; known: {', '.join(schemas)}")
        schemas = schemas[args.topic]
    print(json.dumps(schemas, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from feedback_loop.demo import run_demo

    if not 0 < args.review_budget <= 1:
        raise ConfigurationError(f"--review-budget must be a share in (0, 1], got {args.review_budget}")
    settings = settings.model_copy(update={
        # Elec2 has two rows per hour of event time: a share of rows is 2 * share items per hour.
        "review_budget_per_hour": 2.0 * args.review_budget,
        # The live champion: online challengers for the frozen model; short batches keep the
        # replay's day-by-day lockstep quick (see feedback_loop.lockstep).
        "online_models": settings.online_models or {"elec2-logreg": ["logreg"]},
        # One worker: two partitions are plenty, and each day's round trip pays per partition.
        "partitions": settings.partitions if "partitions" in settings.model_fields_set else 2,
        "monitor_batch_within_seconds": min(settings.monitor_batch_within_seconds, 0.1),
        "batch_within_seconds": min(settings.batch_within_seconds, 0.05),
        "reviewer_tokens": settings.reviewer_tokens or {
            f"sim-{i}": SecretStr(secrets.token_urlsafe(18)) for i in range(args.reviewers)}})

    def body(stack: Any, resolved: Settings) -> None:
        report = run_demo(resolved, say=say, pretrain=args.pretrain, label_delay=args.label_delay,
                          limit=args.limit, reviewers=args.reviewers)
        print("\nLive metrics of the loop (offline acc: the same accuracy computed directly):")
        print(report["table"])
        print(f"\nreport: {report['path']}")

    return _supervised(settings, args, body)


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "up": cmd_up, "worker": cmd_worker, "web": cmd_web, "replay": cmd_replay, "alerts": cmd_alerts,
    "reviews": cmd_reviews, "models": cmd_models, "schema": cmd_schema, "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    # a parent may pass these down blocked; every command stops on them (and so do its children)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        settings = None if args.command == "schema" else load_settings(args)
        return COMMANDS[args.command](args, settings)
    except FeedbackLoopError as exc:
        print(f"feedback-loop: error: {exc}", file=sys.stderr)
        return 1
