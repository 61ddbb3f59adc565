"""Loading the mapping folder: read every YAML file, check it, build `Mappings`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sf_bridge.logging import get_logger
from sf_bridge.mapping.crosscheck import CrossChecker
from sf_bridge.mapping.issues import MappingFilesInvalid, MappingIssue
from sf_bridge.mapping.model import (
    Addon,
    BillingRules,
    CustomerRules,
    Feature,
    Mappings,
    Plan,
    PlanEntitlement,
    ProductRule,
    product_key,
)
from sf_bridge.mapping.schema import Draft, SectionReader
from sf_bridge.mapping.terms_schema import TERMS_SECTIONS
from sf_bridge.mapping.yamlread import Ctx, read_text

log = get_logger(__name__)
VERSION_LENGTH = 12


# A mapping file is a few kilobytes; anything much larger is not a mapping (an export, a log
# dropped in the folder) and would slow every reload, so it is refused unread.
MAX_FILE_BYTES = 1_000_000

# One (name, modification time in ns, size, inode) per mapping file: what changes when a file
# is saved, replaced, added or removed.
Stamp = tuple[tuple[str, int, int, int], ...]


def mapping_files(directory: Path) -> list[Path]:
    """The YAML files of the folder, in name order (sub-folders are not read)."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in (".yaml", ".yml")
    )


def files_stamp(directory: Path) -> Stamp:
    """What the folder's mapping files look like on disk, without reading them."""
    stamp = []
    for path in mapping_files(Path(directory)):
        try:
            info = path.stat()
        except OSError:  # removed since it was listed
            continue
        stamp.append((path.name, info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamp)


def _version(contents: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in contents:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(data)
        digest.update(b"\0")
    return digest.hexdigest()[:VERSION_LENGTH]


@dataclass(frozen=True)
class FolderRead:
    """One reading of the mapping folder: its problems (syntax errors first) and, when there
    are none, the mappings. `stamp` is the files as they were read; `settled` is False when a
    file changed while it was being read (a save under way): read again."""

    directory: Path
    issues: list[MappingIssue]
    mappings: Mappings | None
    version: str
    stamp: Stamp
    settled: bool


def read_folder(directory: Path) -> FolderRead:
    """Reads and checks every mapping file once; builds the mappings when all check clean."""
    directory = Path(directory)
    before = files_stamp(directory)
    draft, issues, contents = _read(directory)
    after = files_stamp(directory)
    version = _version(contents)
    ordered = sorted(issues, key=_issue_order)
    mappings = build(draft, version) if not issues else None
    return FolderRead(directory, ordered, mappings, version, after, before == after)


def _issue_order(issue: MappingIssue) -> tuple[bool, str, int, int, str]:
    """Syntax errors first (the other problems may follow from them), then file and line."""
    return (issue.code != "yaml_syntax", issue.file, issue.line, issue.column, issue.code)


def _read_bytes(path: Path, ctx: Ctx) -> bytes | None:
    """The file's content, or None with a `file_too_large` issue (the file is then not read)."""
    size = path.stat().st_size
    data = b""
    if size <= MAX_FILE_BYTES:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        size = max(size, len(data))
    if size > MAX_FILE_BYTES:
        ctx.add(
            None,
            "file_too_large",
            f"the file is {size:,} bytes; a mapping file may be at most "
            f"{MAX_FILE_BYTES // 1_000_000} MB ({MAX_FILE_BYTES:,} bytes).",
            "move this file out of the mappings folder (only mapping files belong there), or "
            "split it into smaller files.",
        )
        return None
    return data


def _read(directory: Path) -> tuple[Draft, list[MappingIssue], list[tuple[str, bytes]]]:
    draft = Draft()
    issues: list[MappingIssue] = []
    contents: list[tuple[str, bytes]] = []
    folder = str(directory)
    files = mapping_files(directory)
    if not files:
        reason = "does not exist" if not directory.exists() else "has no .yaml files"
        if directory.exists() and not directory.is_dir():
            reason = "is a file, not a folder"
        issues.append(
            MappingIssue(
                folder,
                0,
                0,
                "no_mapping_files",
                f"the mappings folder '{folder}' {reason}.",
                "point SF_BRIDGE_MAPPINGS (or the DIR argument) at the folder holding "
                "catalog.yaml and salesforce.yaml.",
            )
        )
        return draft, issues, contents
    unreadable = False
    for path in files:
        ctx = Ctx(str(path))
        data = _read_bytes(path, ctx)
        root = read_text(data, str(path), ctx) if data is not None else None
        if data is not None:
            contents.append((path.relative_to(directory).as_posix(), data))
        if root is not None:
            SectionReader(ctx, draft).read_root(root)
        else:
            unreadable = unreadable or bool(ctx.issues)
        issues.extend(ctx.issues)
    if not unreadable:
        # Checks across files only make sense once every file has been read: a file that
        # does not parse would show up as missing sections and unknown names.
        issues.extend(CrossChecker(draft, folder).run())
    return draft, issues, contents


def check_mappings(directory: Path) -> list[MappingIssue]:
    """Every problem in the mapping folder at once (an empty list when the files are right).
    A file that cannot be read (not YAML, too large) comes first, and the checks across files
    wait until it reads."""
    return read_folder(Path(directory)).issues


def load_mappings(directory: Path) -> Mappings:
    """The validated mappings of the folder; raises `MappingFilesInvalid` listing every problem."""
    result = read_folder(Path(directory))
    if result.mappings is None:
        raise MappingFilesInvalid(result.issues)
    log.debug("mappings_loaded", directory=str(directory), mapping_version=result.version)
    return result.mappings


def build(draft: Draft, version: str) -> Mappings:
    """Turns a checked draft into `Mappings`."""
    features = {
        name: Feature(name, f.kind, f.unit, f.description, f.combine)
        for name, f in draft.features.items()
    }
    plans = {
        name: Plan(
            name=name,
            kind=p.kind,
            display_name=p.display_name,
            entitlements=tuple(
                PlanEntitlement(e.feature, e.value, e.variable) for e in p.entitlements
            ),
            prices=tuple(price for price, _ in p.prices),
            priced_per=p.priced_per[0] if p.priced_per else None,
        )
        for name, p in draft.plans.items()
    }
    addons = {
        name: Addon(
            name=name,
            display_name=a.display_name,
            prices=tuple(price for price, _ in a.prices),
            adds_per_unit=tuple((f, n) for f, n, _ in a.adds_per_unit),
            switches_on=tuple(f for f, _ in a.switches_on),
            sold_with=tuple(p for p, _ in a.sold_with),
        )
        for name, a in draft.addons.items()
    }
    products = {}
    for code, p in draft.products.items():
        products[product_key(code, draft.match_by)] = ProductRule(
            key=code,
            plan=p.plan[0] if p.plan else None,
            addon=p.addon[0] if p.addon else None,
            interval=p.interval,
        )
    billing = BillingRules(
        collection_method=draft.collection_method.source if draft.collection_method else None,
        payment_terms=draft.payment_terms.source if draft.payment_terms else None,
        interval=draft.interval.source if draft.interval else None,
    )
    return Mappings(
        version=version,
        features=features,
        plans=plans,
        addons=addons,
        products=products,
        match_by=draft.match_by,
        currencies=tuple(dict.fromkeys(c for c, _ in draft.currencies)),
        customer=CustomerRules(
            identifier=draft.identifier, email=tuple(draft.emails), split=draft.customer_split
        ),
        billing=billing,
        entitlement_sources={f: s.source for f, s in draft.entitlement_sources.items()},
        price_override_policy=draft.override_policy,
        write_back=draft.write_back,
        won_stages=list(draft.won_stages),
        when_unwon=draft.when_unwon,
        card_entitlements=draft.card_entitlements,
        terms=draft.terms.build() if any(k in draft.sections for k in TERMS_SECTIONS) else None,
    )
