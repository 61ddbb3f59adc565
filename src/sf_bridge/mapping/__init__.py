"""The RevOps mapping model: mapping files, their checks, and the pure mapping engine.

`load_mappings(folder)` gives a validated `Mappings` (or raises `MappingFilesInvalid`);
`check_mappings(folder)` lists every problem; `sf_bridge.mapping.engine.map_opportunity` turns
one Salesforce opportunity into a `ProvisioningPlan` or a list of `MappingError`s.
"""

from sf_bridge.mapping.issues import MappingFilesInvalid, MappingIssue
from sf_bridge.mapping.loader import check_mappings, load_mappings
from sf_bridge.mapping.model import CatalogPrice, Mappings, WriteBackFields

__all__ = [
    "CatalogPrice",
    "MappingFilesInvalid",
    "MappingIssue",
    "Mappings",
    "WriteBackFields",
    "check_mappings",
    "load_mappings",
]
