"""The edit RevOps makes to un-park a deal: map a new product code onto an existing add-on.

The edit is made to the demo's temporary copy of the mappings, in the file that holds the
`products:` section, keeping every comment and the layout as a person's edit would.
"""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from sf_bridge.demo.components import DemoFailed
from sf_bridge.demo.scenario import MappingFix


def products_file(mappings_dir: Path) -> Path:
    """The mapping file with the top-level `products:` section."""
    yaml = YAML()
    for path in sorted([*mappings_dir.glob("*.yaml"), *mappings_dir.glob("*.yml")]):
        data = yaml.load(path.read_text())
        if isinstance(data, dict) and "products" in data:
            return path
    raise DemoFailed(f"No mapping file in {mappings_dir} has a `products:` section to edit.")


def apply_fix(mappings_dir: Path, fix: MappingFix) -> Path:
    """Adds `fix.product_code: {addon: ..., interval: ...}` to the products; returns the file."""
    path = products_file(mappings_dir)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(path.read_text())
    products = data["products"]
    if fix.product_code in products:
        raise DemoFailed(f"{path.name} already maps {fix.product_code}; nothing to fix.")
    rule = CommentedMap([("addon", fix.addon)])
    if fix.interval:
        rule["interval"] = fix.interval
    rule.fa.set_flow_style()
    products[fix.product_code] = rule
    products.yaml_add_eol_comment(fix.comment, fix.product_code)
    with path.open("w") as out:
        yaml.dump(data, out)
    return path
