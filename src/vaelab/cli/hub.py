"""`vaelab hub push RUN OWNER/NAME` and `vaelab hub pull OWNER/NAME [DIR]`: a run shared on the Hugging Face Hub.

What travels, the model card, the cache and the error lines are `vaelab.runs.hub`'s business; this module
parses the arguments and says what happened. The token is huggingface_hub's (HF_TOKEN, or `hf auth login`),
never an argument (a command line ends up in the shell's history); HF_ENDPOINT points it at another Hub.
"""

from __future__ import annotations

import argparse

from vaelab.cli.common import _formatter, _Parser
from vaelab.log import say
from vaelab.runs.hub import INSTALL, pull_run, push_run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `hub` command (push; pull) to the parser."""
    p = sub.add_parser("hub", help="share a run on the Hugging Face Hub, or fetch one (needs vaelab[hub])",
                       formatter_class=_formatter,
                       description="Push a finished run to a Hugging Face Hub repository, or pull one. Only what "
                                   "loading and evaluating need travels: config.toml, run.json, metrics.jsonl, "
                                   "evaluation.json, the best checkpoint (safetensors + meta.json, no optimizer "
                                   "state), the final images and a generated model card (README.md); a pull "
                                   "downloads only those and checks that the run loads. A pulled run is used like "
                                   "any other; hf:OWNER/NAME[@REVISION] works wherever a run directory goes "
                                   "(vaelab evaluate hf:alice/digits-vae, load_run('hf:alice/digits-vae')). "
                                   f"Needs huggingface_hub: {INSTALL}. The token comes from HF_TOKEN or `hf auth "
                                   "login`; HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE work as for every Hugging Face "
                                   "tool.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    push = actions.add_parser("push", formatter_class=_formatter, help="upload a run to OWNER/NAME",
                              description="Upload the run RUN to the Hub repository OWNER/NAME as one commit "
                                          "(the repository is created when missing), with a model card made from "
                                          "its config and evaluation. Needs a token with write access.")
    push.add_argument("run", help="run directory written by `vaelab train`")
    push.add_argument("repo", metavar="OWNER/NAME", help="the Hub repository, e.g. alice/digits-vae")
    push.add_argument("--private", action="store_true", help="create the repository private (an existing one "
                                                             "keeps its visibility)")
    push.add_argument("--revision", metavar="BRANCH", help="commit to this branch (created from main when "
                                                           "missing; default: main)")
    push.add_argument("--message", metavar="TEXT", help="the commit message (default: Upload vaelab run NAME)")
    push.set_defaults(func=cmd_push)
    pull = actions.add_parser("pull", formatter_class=_formatter, help="download the run in OWNER/NAME",
                              description="Download the run in the Hub repository OWNER/NAME (only the files a run "
                                          "holds: safetensors, JSON, TOML, text, PNG) into DIR and check that it "
                                          "loads. Without DIR it goes where hf:OWNER/NAME resolves to "
                                          "(~/.cache/vaelab/hub/OWNER/NAME/COMMIT/).")
    pull.add_argument("repo", metavar="OWNER/NAME", help="the Hub repository, e.g. alice/digits-vae")
    pull.add_argument("dir", nargs="?", metavar="DIR", help="a new (or empty) folder for the run")
    pull.add_argument("--revision", metavar="R", help="a branch, tag or commit id (default: main)")
    pull.set_defaults(func=cmd_pull)


def cmd_push(args: argparse.Namespace) -> int:
    result = push_run(args.run, args.repo, private=args.private, revision=args.revision,
                      commit_message=args.message)
    say(f"pushed {len(result.files)} files to {result.url} (branch {result.revision}, commit {result.commit[:12]})")
    if result.left_out:
        shown = ", ".join(result.left_out[:4]) + (", ..." if len(result.left_out) > 4 else "")
        say(f"left at home: {len(result.left_out)} files ({shown})")
    say(f"load it with: load_run('hf:{result.repo_id}') or vaelab hub pull {result.repo_id} DIR")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    folder = pull_run(args.repo, args.dir, revision=args.revision)
    say(f"pulled {args.repo}{'@' + args.revision if args.revision else ''} into {folder}")
    return 0
