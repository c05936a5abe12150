"""``%midori log``: read and control the call log (:mod:`midori_hf_nb.log`) from a cell.

::

    %midori log                       the last 10 calls (an escaped table)
    %midori log -n 3 -q paris         full-text search over prompts and answers
    %midori log -m SmolLM2 --since 2h --notebook 03_chat --json
    %midori log --cid my-chat         the calls of one conversation (id or name)
    %midori log transcript my-chat    a conversation rebuilt as a transcript
    %midori log conversations         the logged conversations
    %midori log delete --cid my-chat  delete (then the file is compacted)
    %midori log off | on [--path F] | status
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

#: what ``%midori log ACTION`` can do
ACTIONS = ("list", "transcript", "conversations", "delete", "on", "off", "status")


def add_log_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``log`` command's parser (a subparser of ``%midori``)."""
    parser = sub.add_parser(
        "log", help="read the call log (filters like `llm logs`), or turn it off/on, or delete from it",
        description="Every call of this package's agents is recorded in a local SQLite database (the call log). "
                    "Without an action: the last calls matching the filters, as a table.")
    parser.add_argument("action", nargs="?", default="list", choices=ACTIONS,
                        help="list (default), transcript ID, conversations, delete, on, off, status")
    parser.add_argument("target", nargs="?", metavar="ID", help="transcript: the conversation's id or name")
    parser.add_argument("-n", "--count", type=int, default=10, metavar="N", help="the last N calls (0: all)")
    parser.add_argument("-q", "--query", metavar="TEXT", help="full-text search over prompts and answers")
    parser.add_argument("-m", "--model", metavar="MODEL", help="a model name or part of it")
    parser.add_argument("--cid", "--conversation", dest="conversation", metavar="ID",
                        help="a conversation's id or name")
    parser.add_argument("--id", dest="ids", action="append", metavar="ID", help="a call's log id (repeatable)")
    parser.add_argument("--notebook", metavar="TEXT", help="part of the notebook's path")
    parser.add_argument("--surface", metavar="NAME", help="chat_panel, magic, stream_to_cell, compare, api...")
    parser.add_argument("--since", metavar="WHEN", help="from this time: 2026-12-01, 2026-12-01T09:30, 30m, 2h, 7d")
    parser.add_argument("--until", metavar="WHEN", help="up to this time (same forms as --since)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--full", action="store_true", help="every column")
    parser.add_argument("--all", action="store_true", help="delete: every call (when no filter is given)")
    parser.add_argument("--path", metavar="FILE", help="another log file (on: record to this file from now on)")
    parser.add_argument("--name", metavar="VAR", help="also store the result in this notebook variable")
    return parser


def _store(shell: Any, name: str | None, value: Any) -> None:
    if name:
        shell.user_ns[name] = value


def _list(args: argparse.Namespace, shell: Any) -> None:
    from IPython.display import display

    from ... import log
    from ..log_view import log_view

    filters = dict(query=args.query, model=args.model, conversation=args.conversation, notebook=args.notebook,
                   since=args.since, until=args.until, surface=args.surface, ids=args.ids, path=args.path)
    if args.json:
        from ...log.rows import RESPONSE_COLUMNS
        from ...log.reader import DEFAULT_COLUMNS

        rows = log.select_rows(args.count, columns=RESPONSE_COLUMNS if args.full else DEFAULT_COLUMNS, **filters)
        _store(shell, args.name, rows)
        print(log.rows_json(rows))
        return
    frame = log.logs(args.count, full=args.full, **filters)
    _store(shell, args.name, frame)
    if frame.empty:
        print(f"No logged calls match (log: {log.log_path() if args.path is None else args.path}).")
        return
    display(log_view(frame))


def _transcript(args: argparse.Namespace, shell: Any) -> None:
    from IPython.display import display

    from ... import log
    from ..log_view import ConversationView

    if not args.target:
        raise UsageError("%midori log transcript: give the conversation's id or name (%midori log conversations "
                         "lists them)")
    conversation = log.transcript(args.target, path=args.path)
    _store(shell, args.name, conversation)
    if args.json:
        from ...log.rows import plain
        import json

        print(json.dumps(plain(conversation.memory), indent=2, ensure_ascii=False))
        return
    display(ConversationView(conversation))


def _delete(args: argparse.Namespace) -> None:
    from ... import log

    result = log.delete(ids=args.ids, conversation=args.conversation, since=args.since, until=args.until,
                        everything=args.all, path=args.path)
    print(f"Deleted {result.deleted} call(s) and {result.conversations} conversation(s) from {result.path}; "
          f"compacted: {result.size_before / 1024:.0f} KiB -> {result.size_after / 1024:.0f} KiB"
          + ("" if result.wal_emptied or not result.compacted else
             " (another process holds the file open: its write-ahead log is emptied when that one closes it)"))


def run_log_command(args: argparse.Namespace, shell: Any) -> None:
    """Carry out ``%midori log ...`` (see the module docstring)."""
    from ... import log

    try:
        if args.action == "list":
            _list(args, shell)
        elif args.action == "transcript":
            _transcript(args, shell)
        elif args.action == "conversations":
            from IPython.display import display

            from ..log_view import log_view

            frame = log.conversations(args.count, path=args.path)
            _store(shell, args.name, frame)
            display(log_view(frame)) if not frame.empty else print("No logged conversations.")
        elif args.action == "delete":
            _delete(args)
        elif args.action == "on":
            print(f"The call log records to {log.on(args.path)}.")
        elif args.action == "off":
            log.off()
            print("The call log is off in this process: calls are not recorded, except those of agents or calls "
                  "given log=True or a path. `%midori log on` turns it back on.")
        else:
            info = log.info(args.path)
            _store(shell, args.name, info)
            print("\n".join(f"{key}: {value}" for key, value in info.items()))
    except (ValueError, LookupError) as exc:
        raise UsageError(f"%midori log {args.action}: {exc}") from None


__all__ = ["ACTIONS", "add_log_parser", "run_log_command"]
