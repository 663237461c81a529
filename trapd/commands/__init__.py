"""One module per ``trapd`` subcommand.

Each module defines ``HELP`` (one line), ``configure(parser)`` and
``main(args) -> int``. Modules import only argparse-level things at the top;
the heavy imports (pysnmp, the rule engine) happen inside ``main`` so that
``trapd --help`` and ``trapd check`` start fast.
"""

# Order here is the order in `trapd --help`.
COMMANDS = ("run", "listen", "check", "test", "actions", "journal", "kea", "mibs", "schema")
