"""The preview page's answer: what one opportunity would provision, computed by the code of
`sf-bridge mappings preview` (the mapping engine, then the Stripe requests the steps send)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.crm.port import CrmGateway
from sf_bridge.db.models import Deal
from sf_bridge.errors import ConfigurationError, SfBridgeError
from sf_bridge.mapping import Mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.mapping.render import preview_json
from sf_bridge.plan import ProvisioningPlan
from sf_bridge.provisioning.stripe_request import (
    RequestPreview,
    preview_request,
    price_lookup_keys,
    prices_from_catalog,
)

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway


@dataclass(frozen=True)
class PreviewAnswer:
    opportunity_id: str
    source: str  # where the record came from, said to the reader
    result: dict[str, Any]  # `mappings preview --json` for this opportunity
    deal_id: int | None  # the deal sf-bridge already holds for it, if any


def _request(
    plan: ProvisioningPlan, mappings: Mappings, billing: BillingGateway | None
) -> RequestPreview:
    """Catalog prices looked up in Stripe (read only) when a key is set, as the CLI does."""
    if plan.is_custom:
        return preview_request(plan, {}, "mapping catalog")
    if billing is None:
        note = "STRIPE_API_KEY is not set: the price ids and products are placeholders"
        return preview_request(plan, prices_from_catalog(mappings), "mapping catalog", note)
    try:
        prices = billing.find_prices(price_lookup_keys(plan))
    except SfBridgeError as exc:
        note = f"Stripe could not be asked ({exc.message}); price ids are placeholders"
        return preview_request(plan, prices_from_catalog(mappings), "mapping catalog", note)
    return preview_request(plan, prices, "stripe")


def preview_opportunity(
    text: str,
    mappings: Mappings,
    session_factory: sessionmaker[Session],
    crm: CrmGateway | None,
    billing: BillingGateway | None,
) -> PreviewAnswer:
    """Fetches the opportunity from Salesforce when it is configured, else takes the snapshot
    stored with its deal; maps it with `mappings`; never writes anything."""
    opportunity_id = ids.opportunity_id(text, error=ConfigurationError)
    with session_factory() as session:
        deal = session.scalar(select(Deal).where(Deal.opportunity_id == opportunity_id))
        deal_id = deal.id if deal is not None else None
        snapshot = deal.opportunity if deal is not None else None
    if crm is not None:
        records = crm.fetch_opportunities([opportunity_id])
        if not records:
            raise ConfigurationError(
                f"No opportunity with the Id {opportunity_id} was found in Salesforce.",
                hint="check the Id and that the integration user can see the record.",
            )
        record, source = records[0], "fetched from Salesforce just now"
    elif snapshot:
        record, source = (
            snapshot,
            f"the snapshot stored with deal {deal_id} (Salesforce is not configured)",
        )
    else:
        raise ConfigurationError(
            f"Salesforce is not configured and sf-bridge holds no deal for {opportunity_id}.",
            hint="set SF_USERNAME (or SF_CLIENT_ID) and the other SF_* settings so the console "
            "can fetch the opportunity, or preview a file with `sf-bridge mappings preview "
            "--file OPP.json`.",
        )
    result = map_opportunity(record, mappings)
    request = _request(result, mappings, billing) if isinstance(result, ProvisioningPlan) else None
    return PreviewAnswer(
        opportunity_id,
        source,
        preview_json(opportunity_id, result, mappings.version, request),
        deal_id,
    )
