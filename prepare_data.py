"""Build a dataset into data_files/ and print its folder.

    python prepare_data.py --dataset hamiltonian_cycle --num_train_samples 1000
    python prepare_data.py --dataset ultrafeedback --filter_out_translate_prompts \\
        --tokenizer_for_length_filtering meta-llama/Llama-3.2-1B
    python prepare_data.py --dataset NAME --help      # that dataset's options
    python prepare_data.py rewrite --dataset data_files/FOLDER --kind paraphrase   # see rewrite --help

The flags are generated from the recipe's options (rm_exps.data.prepare.RECIPES), under the
reference's spellings where it had one (--random_seed, --ham_cycle_num_vertices, ...) and their own
names. Values are validated by the recipe; a bad option exits with status 2 and a message.
Commands: `prepare` (the default, so it can be left out), `rewrite` (rm_exps.data.rewrite: paraphrase or
translate responses with an OpenAI-compatible model); more can be added to COMMANDS.
"""

import argparse
import logging
import sys
import typing

from pydantic import AliasChoices

from rm_exps.data.prepare import RECIPES, prepare_dataset, validate_recipe
from rm_exps.data.rewrite import rewrite_main
from rm_exps.suggest import closest_name


def _flags(name: str, field) -> list[str]:
    aliases = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else [name]
    return ["--" + a for a in aliases]


def prepare_parser(dataset: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
        usage="%(prog)s [prepare] --dataset NAME [options] | %(prog)s rewrite ...",
        description="Build a preference dataset from a recipe into --output_dir and print its folder.",
        epilog=_commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--dataset", required=True, choices=list(RECIPES), help="Recipe name.")
    parser.add_argument("--output_dir", default="data_files", help="Folder the dataset folder goes into.")
    if dataset not in RECIPES:
        return parser
    group = parser.add_argument_group(f"{dataset} options")
    for name, field in RECIPES[dataset].model_fields.items():
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=f"{field.description} (default: {field.default!r})")
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(field.annotation) is tuple:
            kwargs["nargs"] = "+"
        group.add_argument(*_flags(name, field), **kwargs)  # strings; the recipe converts and checks them
    return parser


def _commands_help() -> str:
    rows = [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(["commands:", *rows, "", "each recipe has its own options: prepare_data.py --dataset NAME --help"])


def prepare_main(argv: list[str]) -> None:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dataset")
    dataset = pre.parse_known_args(argv)[0].dataset
    parser = prepare_parser(dataset)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [s for action in parser._actions for s in action.option_strings]
        hints = [
            f"{u} (did you mean {close}?)" if (close := closest_name(u, flags)) else u
            for u in unknown
            if u.startswith("-")
        ]
        parser.error(f"unrecognized arguments: {', '.join(hints or unknown)}")
    args = vars(args)
    output_dir = args.pop("output_dir")
    spec = {"name": args.pop("dataset"), **args}
    problem = validate_recipe(spec)
    if problem:
        parser.error(problem)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        print(prepare_dataset(spec, data_dir=output_dir))
    except ValueError as e:  # DatasetError, or a recipe the generator cannot satisfy
        parser.exit(2, f"prepare_data.py: error: {e}\n")


COMMANDS = {
    "prepare": (prepare_main, "build a dataset from a recipe (the default: `prepare` can be left out)"),
    "rewrite": (
        rewrite_main,
        "paraphrase or translate a prepared dataset's responses with an OpenAI-compatible model "
        "(prepare_data.py rewrite --help)",
    ),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]][0](argv[1:])
    else:
        prepare_main(argv)


if __name__ == "__main__":
    main()
