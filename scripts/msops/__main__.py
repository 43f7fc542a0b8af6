"""Command line for the environment operations; scripts/{render,validate,promote,set-image,diff,rollout} call it."""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from . import OpsError, cluster, diff, environments, gobuild, render, rollout, validate, values
from .tools import ROOT


def _envs_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env", action="append", dest="envs", metavar="NAME", help="environment (repeatable; default: all)"
    )
    _models_arg(parser)


def _models_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME", help="model (repeatable; default: every one served)"
    )


def cmd_render(args: argparse.Namespace) -> int:
    decl = environments.load()
    envs = decl.select(args.envs)
    for env in envs:
        env.select(args.models)  # an unknown model fails before anything renders
    if args.output_dir:
        for path in render.write(decl, envs, args.output_dir, models=args.models):
            print(path, file=sys.stderr)
        return 0
    for env in envs:
        for release in env.select(args.models):
            sys.stdout.write(
                f"# ---- environment: {env.name}, model: {release.model} "
                f"(release {release.name}, namespace {env.namespace})\n"
            )
            sys.stdout.write(render.render(decl, env, release))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    decl = environments.load()
    if args.chart_base:
        problem = validate.chart_change_without_bump(args.chart_base, chart=decl.chart)
        if problem:
            raise OpsError(problem)
        print(f"ok    {decl.chart}/Chart.yaml version bumped with the chart's changes since {args.chart_base}")
    locations = tuple(args.schema_location or ())
    schema_dir = args.schema_dir or os.environ.get("MSOPS_SCHEMA_DIR")
    if schema_dir:
        locations += validate.mirror_locations(Path(schema_dir))
    report = validate.validate(
        decl,
        decl.select(args.envs),
        tuple(args.kubernetes_version or validate.DEFAULT_KUBERNETES_VERSIONS),
        locations or validate.PUBLIC_SCHEMA_LOCATIONS,
        models=args.models,
    )
    print("\n".join(report.lines))
    if report.failures:
        print(f"validate: {len(report.failures)} problem(s)", file=sys.stderr)
        return 1
    return 0


def _finish_edit(diff_text: str, message: str, args: argparse.Namespace, paths: list[str]) -> int:
    if not diff_text:
        print("nothing to change", file=sys.stderr)
        return 0
    sys.stdout.write(diff_text)
    if args.dry_run:
        print("(dry run: nothing written)", file=sys.stderr)
        return 0
    if args.commit:
        try:
            subprocess.run(["git", "add", "--", *paths], cwd=ROOT, check=True)
            subprocess.run(["git", "commit", "--quiet", "-m", message, "--", *paths], cwd=ROOT, check=True)
        except subprocess.CalledProcessError as exc:
            raise OpsError(f"git commit failed ({exc}); {', '.join(paths)} changed but not committed") from None
        print(f"committed: {message}", file=sys.stderr)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    decl = environments.load()
    source, target = decl.get(args.source), decl.get(args.target)
    if args.artifact and not args.model:
        raise OpsError("--artifact goes with --model NAME: it gives that model's version and sha256")
    if args.model:
        text = values.promote_model(decl, source, target, args.model, dry_run=args.dry_run, artifact=args.artifact)
        version = values.model_pin(decl, source, args.model, artifact=args.artifact)["model.version"]
        message = f"Promote {args.model} {version} from {source.name} to {target.name}"
        paths = [target.model_file(args.model)]
    elif args.chart:
        text = values.promote_chart(decl, source, target, dry_run=args.dry_run)
        version = values.source_chart_version(decl, source)
        message = f"Promote chart {version} from {source.name} to {target.name}"
        paths = [str(p) for p in values.chart_pin_files(target)]
    else:
        text = values.promote_image(decl, source, target, dry_run=args.dry_run)
        tag = values.get_path(values.files_values(source.values_files), "image.tag")
        message = f"Promote image {tag} from {source.name} to {target.name}"
        paths = [target.values_files[-1]]
    return _finish_edit(text, message, args, paths)


def cmd_set_image(args: argparse.Namespace) -> int:
    decl = environments.load()
    env = decl.get(args.env)
    text = values.set_image(decl, env, args.tag, args.digest, dry_run=args.dry_run)
    message = f"Deploy image {args.tag}{'@' + args.digest if args.digest else ''} to {env.name}"
    return _finish_edit(text, message, args, [env.values_files[-1]])


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.env:
        if not args.model:
            raise OpsError("--env goes with --model NAME: the release is one model's")
        env = environments.load().get(args.env)
        namespace, release = env.namespace, env.release(args.model).name
    elif args.namespace and args.release:
        if args.action == "revert":
            raise OpsError("revert needs --env and --model: it edits that environment's values file")
        namespace, release = args.namespace, args.release
    else:
        raise OpsError("name the release: --env ENV --model NAME, or --namespace NS --release NAME")
    found = rollout.status(rollout.kubectl_runner(args.kubectl, args.kubeconfig), namespace, release)
    print("\n".join(found.lines()))
    if args.action == "status":
        return 1 if found.aborted else 0
    if not found.aborted:
        raise OpsError(f"the rollout is not aborted ({found.phase}): the new version is not refused, nothing to revert")
    path = env.model_file(args.model)
    before, subject = rollout.revert_text(ROOT, path)
    current = (ROOT / path).read_text()
    text = "".join(difflib.unified_diff(current.splitlines(True), before.splitlines(True), f"a/{path}", f"b/{path}"))
    if text and not args.dry_run:
        (ROOT / path).write_text(before)
    return _finish_edit(text, rollout.revert_message(args.model, env.name, subject, found), args, [path])


def cmd_diff(args: argparse.Namespace) -> int:
    if args.ref:
        if len(args.environments) != 1:
            raise OpsError("with --ref, name exactly one environment")
        text = diff.against_ref(args.ref, args.environments[0], args.models)
    else:
        if len(args.environments) != 2:
            raise OpsError("name two environments (or --ref REF and one environment)")
        first, second = args.environments
        text = diff.between_environments(first, second, models=args.models)
    sys.stdout.write(text or "no differences\n")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    if args.action == "load-image":
        if len(args.names) > 1:
            raise OpsError("load-image takes at most one image reference")
        print(cluster.load_image(args.names[0] if args.names else None))
        return 0
    unknown = [name for name in args.names if name not in gobuild.COMPONENTS]
    if unknown:
        raise OpsError(f"unknown component(s) {', '.join(unknown)} (known: {', '.join(gobuild.COMPONENTS)})")
    if args.names and args.action not in ("build", "wrap"):
        raise OpsError(f"'{args.action}' takes no component names")
    # With a real node, kwok nodes are extra (none by default); without one, they are the only nodes.
    nodes = args.nodes if args.nodes is not None else (0 if args.real_node else 3)
    low = 0 if args.real_node else 1
    if not low <= nodes <= 50:
        raise OpsError(f"--nodes must be {low}..50, not {nodes}")
    if args.action == "up":
        cluster.up(with_flux=args.flux, nodes=nodes, real_node=args.real_node)
    elif args.action == "down":
        cluster.down()
    elif args.action == "status":
        return cluster.status()
    elif args.action == "kubeconfig":
        print(cluster.KUBECONFIG)
    elif args.action == "build":
        for name in args.names or gobuild.COMPONENTS:
            cluster.log(f"{name} {gobuild.COMPONENTS[name].version}: {gobuild.build(name, log=cluster.log)}")
    elif args.action == "wrap":
        if not args.names:
            raise OpsError(f"name the wrapper(s) to regenerate: {', '.join(gobuild.COMPONENTS)}")
        for name in args.names:
            print(gobuild.wrap(name))
    return 0


def _render_arguments(p: argparse.ArgumentParser) -> None:
    _envs_arg(p)
    p.add_argument("--output-dir", type=Path, help="write <env>-<model>.yaml files here instead of stdout")


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    _envs_arg(p)
    p.add_argument("--kubernetes-version", action="append", metavar="X.Y.Z", help="default: 1.30.0 and 1.34.0")
    p.add_argument(
        "--schema-location", action="append", metavar="TEMPLATE", help="kubeconform schema location (repeatable)"
    )
    p.add_argument(
        "--schema-dir", metavar="DIR", help="offline schema mirror (layout of shared/schemas); env MSOPS_SCHEMA_DIR"
    )
    p.add_argument(
        "--chart-base", metavar="REF", help="also fail when chart/ changed since REF without a Chart.yaml version bump"
    )


def _edit_arguments(p: argparse.ArgumentParser) -> None:
    """What every command that edits the environments takes."""
    p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    p.add_argument("--commit", action="store_true", help="git commit the change")


def _promote_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="ENV")
    p.add_argument("--to", dest="target", required=True, metavar="ENV")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", action="store_true", help="the image tag and digest (every model)")
    what.add_argument("--model", metavar="NAME", help="one model's version and sha256 (and model store path)")
    what.add_argument("--chart", action="store_true", help="the chart version (Argo CD and Flux pins too)")
    p.add_argument(
        "--artifact",
        type=Path,
        metavar="DIR",
        help="with --model: take version and sha256 from this artifact directory's metadata.json (the "
        "directory the ML release pipeline copies to the model store; needed where --from serves the "
        "model from its image, which pins no sha256)",
    )
    _edit_arguments(p)


def _set_image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--digest", help="sha256:<64 hex>; omitted means no digest (the tag decides)")
    _edit_arguments(p)


def _diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("environments", nargs="+", metavar="ENV")
    p.add_argument("--ref", help="git ref to compare the work tree with")
    _models_arg(p)


def _rollout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("status", "revert"),
        help="status: the canary's phase, step and latest judgement (exit 1 when aborted); revert: after an "
        "aborted canary, put the environment's values file back as it was before its last commit",
    )
    p.add_argument("--env", metavar="ENV", help="the environment (with --model)")
    p.add_argument("--model", metavar="NAME", help="the model whose release it is")
    p.add_argument("--namespace", help="for status: any release's namespace (with --release) instead of --env")
    p.add_argument("--release", help="for status: the Helm release's name")
    p.add_argument("--kubeconfig", help="the cluster's kubeconfig (default: kubectl's own)")
    p.add_argument("--kubectl", help="the kubectl binary (default: the one on PATH)")
    _edit_arguments(p)


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("up", "down", "status", "kubeconfig", "build", "wrap", "load-image"),
        help="up: start (building binaries first if missing); down: stop everything by PID; status; "
        "kubeconfig: print its path; build: build binaries; wrap: regenerate a wrapper module; "
        "load-image [REF]: import an image into the real node (built with scripts/build-image without REF)",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="COMPONENT",
        help=f"for build/wrap: {', '.join(gobuild.COMPONENTS)}; for load-image: the image reference",
    )
    p.add_argument("--flux", action="store_true", help="also run the Flux source- and helm-controllers")
    p.add_argument(
        "--real-node",
        action="store_true",
        help="also run one real node (containerd, kubelet, kube-proxy, CoreDNS, NetworkPolicy, metrics-server)",
    )
    p.add_argument("--nodes", type=int, help="kwok nodes to create (default 3, one per zone; 0 beside a real node)")


Command = Callable[[argparse.Namespace], int]

# name, help, its arguments, what runs it; in the order `msops --help` lists them.
COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Command], ...] = (
    ("render", "helm template each environment exactly as Argo CD / Flux would", _render_arguments, cmd_render),
    (
        "validate",
        "schema, render and kubeconform every environment and the GitOps manifests",
        _validate_arguments,
        cmd_validate,
    ),
    (
        "promote",
        "move the image, one model's version, or the chart version to the next environment",
        _promote_arguments,
        cmd_promote,
    ),
    (
        "set-image",
        "point one environment (every model) at an image tag (and digest)",
        _set_image_arguments,
        cmd_set_image,
    ),
    (
        "diff",
        "rendered diff between two environments, or one environment against a git ref",
        _diff_arguments,
        cmd_diff,
    ),
    (
        "rollout",
        "a canary's verdict (status), and git put back after an aborted one (revert)",
        _rollout_arguments,
        cmd_rollout,
    ),
    ("cluster", "local control plane on 127.0.0.1 for the end-to-end tests", _cluster_arguments, cmd_cluster),
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="msops", description="Operate the GitOps environments declared in environments/environments.yaml."
    )
    sub = top.add_subparsers(dest="command", required=True)
    for name, helptext, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=helptext)
        add_arguments(p)
        p.set_defaults(func=run)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run: Command = args.func
    try:
        return run(args)
    except OpsError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `msops ... | head`: the reader left; nothing more to say (and no traceback about it).
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
