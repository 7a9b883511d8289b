"""``voice-agent``: the project's command line.

- ``voice-agent local [--port N]``: the local stack (no AWS account, no internet).
- ``voice-agent call URL --wav in.wav --out reply.wav``: a command-line caller and smoke test.
- ``voice-agent cost --stack NAME``: dollars per call-minute of a stack, itemised.
- ``voice-agent token --local | --stack NAME``: a connect token and a ready URL.
- ``voice-agent bench [--quick] [--json] [--out DIR]``: latency, capacity, cold start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
from collections.abc import Sequence

from voice_agent import bench, cost, token_command
from voice_agent.arguments import bounded_int
from wire import realtime as rt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voice-agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="run the whole stack on this machine")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument(
        "--port",
        type=int,
        default=8000,
        help="page, WebSocket and @connections port (0 picks a free one; default 8000)",
    )
    local.add_argument("--model", choices=rt.MODELS, default="gpt-realtime-mini")
    local.add_argument("--voice", choices=rt.VOICES, default=rt.DEFAULT_VOICE)
    local.add_argument(
        "--chunk-bytes",
        type=int,
        default=None,
        help="downlink PCM bytes per message (default 4800 = 100 ms)",
    )
    local.add_argument(
        "--default-route",
        choices=("lambda", "sqs"),
        default="lambda",
        help="$default as a Lambda (default) or the lean SQS integration (defaultRouteIntegration)",
    )
    local.add_argument(
        "--max-sessions",
        type=int,
        default=100,
        help="concurrent calls $connect admits, as the stack's maxSessions (0 = no limit)",
    )
    local.add_argument(
        "--workers",
        type=bounded_int(1, 32, "--workers"),
        default=1,
        help="worker processes (default 1); calls are spread over them and handed over "
        "when one stops (send one SIGTERM to see it)",
    )
    local.add_argument(
        "--slots",
        type=bounded_int(1, 64, "--slots"),
        default=None,
        help="worker slots, one queue each, as the stack's workerSlots (default: --workers)",
    )
    local.add_argument(
        "--no-respawn",
        action="store_true",
        help="do not start a worker again when one exits (ECS would)",
    )
    local.add_argument(
        "--queue-chaos",
        type=int,
        default=None,
        metavar="SEED",
        help="for tests: repeat and reorder frames on their way to the queue",
    )
    local.add_argument(
        "--log-level",
        default="WARNING",
        help="log level of handlers and worker (JSON lines on stderr)",
    )

    call = commands.add_parser("call", help="stream a WAV to an endpoint and save the reply")
    call.add_argument("url", help="ws:// or wss:// URL of the stack (local or deployed)")
    call.add_argument("--wav", required=True, help="16-bit PCM WAV to speak (any rate)")
    call.add_argument("--out", required=True, help="where to write the reply (24 kHz WAV)")
    call.add_argument("--frame-ms", type=int, default=100, help="uplink frame length")
    call.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="1 = real time like a microphone, 0 = as fast as possible",
    )
    call.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the replies after the WAV ends",
    )

    cost.add_arguments(commands.add_parser("cost", help="dollars per call-minute of a stack"))

    token_command.add_arguments(
        commands.add_parser("token", help="mint a connect token and print a ready URL")
    )

    bench.add_arguments(commands.add_parser("bench", help="measure the voice path locally"))

    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run(args)
    if args.command == "cost":
        return cost.run(args)
    if args.command == "token":
        return token_command.run(args)
    if args.command == "local":
        return _run_local(args)
    return _run_call(args)


def _run_local(args: argparse.Namespace) -> int:
    from voice_agent.local_stack import LocalStack, LocalStackOptions

    options = LocalStackOptions(
        host=args.host,
        port=args.port,
        model=args.model,
        voice=args.voice,
        openai_api_key=os.environ.get("OPENAI_API_KEY", ""),
        chunk_bytes=args.chunk_bytes,
        log_level=args.log_level,
        max_sessions=args.max_sessions,
        default_route=args.default_route,
        workers=args.workers,
        slots=args.slots,
        respawn_workers=not args.no_respawn,
        queue_chaos_seed=args.queue_chaos,
    )

    async def serve() -> None:
        stack = LocalStack(options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            urls = await stack.start()
            model = "OpenAI Realtime" if options.openai_api_key else "Realtime emulator"
            print(f"voice-agent local stack is up ({model}: {urls.realtime})")
            print(f"  Page:      {urls.page}")
            print(f"  WebSocket: {urls.websocket}")
            print(f"  @connections endpoint: {urls.connections}")
            print(
                "  (the token in these URLs opens calls for an hour; "
                "`voice-agent token --local` mints more)"
            )
            print("Press Ctrl-C to stop.", flush=True)
            await stop.wait()
            print("stopping...", flush=True)
        finally:
            await stack.stop()
        print("stopped", flush=True)

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"voice-agent local: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_call(args: argparse.Namespace) -> int:
    from voice_agent.caller import call_gateway
    from voice_agent.wav import WavError, read_pcm24k, write_pcm24k

    try:
        pcm = read_pcm24k(args.wav)
    except (OSError, WavError) as exc:
        print(f"voice-agent call: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            call_gateway(
                args.url, pcm, frame_ms=args.frame_ms, pace=args.pace, settle_timeout_s=args.timeout
            )
        )
    except (OSError, TimeoutError) as exc:
        print(f"voice-agent call: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a handshake refusal (401/403) or a protocol failure
        print(f"voice-agent call: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    write_pcm24k(args.out, result.reply_pcm)
    seconds = len(result.reply_pcm) / 48_000
    print(f"reply: {seconds:.2f} s of audio in {args.out}; {len(result.turns)} turn(s)")
    for i, turn in enumerate(result.turns, 1):
        latency = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else "no reply"
        print(f"  turn {i}: end of speech at {turn.speech_end_ms} ms -> first audio: {latency}")
    if result.latencies_ms and args.pace:
        print(
            f"median end-of-speech -> first-audio latency: "
            f"{statistics.median(result.latencies_ms):.0f} ms"
        )
    for error in result.errors:
        print(f"  error from server: {error.get('code')}: {error.get('message')}")
    return 0 if result.reply_pcm else 1


if __name__ == "__main__":
    sys.exit(main())
