"""`srlm run` resumes: it materializes only the assets Dagster reports missing or stale, and says why.

An asset is stale when its code version changed (its recipe: config sections, templates, SQL) or an upstream
asset was materialized with new data since. Dagster marks only the assets whose own inputs changed, so the
run proceeds in passes: after each pass the status is read again, and the assets that a new upstream
data version made stale run in the next pass. A deterministic upstream that gives the same data again leaves
its dependents fresh: they are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime


@dataclass
class Plan:
    run: list[dg.AssetKey] = field(default_factory=list)
    kept: list[dg.AssetKey] = field(default_factory=list)
    reasons: dict[dg.AssetKey, str] = field(default_factory=dict)  # why each asset of `run` runs


def _resolver(instance: dg.DagsterInstance, graph) -> CachingStaleStatusResolver:
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def _reason(resolver: CachingStaleStatusResolver, key: dg.AssetKey) -> str | None:
    status = resolver.get_status(key)
    if status == StaleStatus.MISSING:
        return "not materialized yet"
    if status == StaleStatus.STALE:
        causes = resolver.get_stale_root_causes(key)
        return "; ".join(sorted({f"{c.asset_key.to_user_string()} {c.reason}" for c in causes})) or "stale"
    return None


def plan(instance: dg.DagsterInstance, graph, keys: list[dg.AssetKey], force: bool = False) -> Plan:
    """Which of `keys` to materialize now (missing or stale; everything with `force`) and which to keep."""
    if force:
        return Plan(run=sorted(keys), reasons={k: "--force" for k in keys})
    resolver = _resolver(instance, graph)
    result = Plan()
    for key in sorted(keys):
        reason = _reason(resolver, key)
        if reason is None:
            result.kept.append(key)
        else:
            result.run.append(key)
            result.reasons[key] = reason
    return result
