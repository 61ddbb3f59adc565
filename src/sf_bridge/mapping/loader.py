"""Loading the mapping folder: read every YAML file, check it, build `Mappings`."""

from __future__ import annotations

import hashlib
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
from sf_bridge.mapping.yamlread import Ctx, read_file

log = get_logger(__name__)
VERSION_LENGTH = 12


def mapping_files(directory: Path) -> list[Path]:
    """The YAML files of the folder, in name order (sub-folders are not read)."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in (".yaml", ".yml")
    )


def content_version(files: list[Path], directory: Path) -> str:
    """A short hash of the files' names and contents: the mapping version a plan records."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:VERSION_LENGTH]


def _read(directory: Path) -> tuple[Draft, list[MappingIssue], list[Path]]:
    draft = Draft()
    issues: list[MappingIssue] = []
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
        return draft, issues, files
    for path in files:
        ctx = Ctx(str(path))
        root = read_file(path, str(path), ctx)
        if root is not None:
            SectionReader(ctx, draft).read_root(root)
        issues.extend(ctx.issues)
    issues.extend(CrossChecker(draft, folder).run())
    return draft, issues, files


def check_mappings(directory: Path) -> list[MappingIssue]:
    """Every problem in the mapping folder at once (an empty list when the files are right)."""
    _draft, issues, _files = _read(Path(directory))
    return sorted(issues, key=lambda i: (i.file, i.line, i.column, i.code))


def load_mappings(directory: Path) -> Mappings:
    """The validated mappings of the folder; raises `MappingFilesInvalid` listing every problem."""
    directory = Path(directory)
    draft, issues, files = _read(directory)
    if issues:
        raise MappingFilesInvalid(sorted(issues, key=lambda i: (i.file, i.line, i.column)))
    mappings = build(draft, content_version(files, directory))
    log.debug("mappings_loaded", directory=str(directory), mapping_version=mappings.version)
    return mappings


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
    )
