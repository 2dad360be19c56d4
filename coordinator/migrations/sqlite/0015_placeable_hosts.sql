-- A claim's placement walk reads only the hosts that may take VMs: each `host_allocations`
-- row says whether its host is placeable (connected and not drained), and both placement
-- indexes lead with it. Before, the walk passed over every unreachable or drained host
-- with more room than the best placeable one, and such hosts end up first: they receive
-- no VMs. Triggers keep the flag current on every change of a host's status or drain, by
-- whichever statement makes it.
ALTER TABLE host_allocations ADD COLUMN placeable INTEGER NOT NULL DEFAULT 0;

UPDATE host_allocations
SET placeable = COALESCE((SELECT h.status = 'connected' AND h.drained_at IS NULL
                          FROM hosts h WHERE h.id = host_allocations.host_id), 0);

CREATE TRIGGER hosts_placeable AFTER UPDATE OF status, drained_at ON hosts
BEGIN
    UPDATE host_allocations
    SET placeable = (NEW.status = 'connected' AND NEW.drained_at IS NULL)
    WHERE host_id = NEW.id;
END;

CREATE TRIGGER host_allocations_placeable AFTER INSERT ON host_allocations
BEGIN
    UPDATE host_allocations
    SET placeable = COALESCE((SELECT h.status = 'connected' AND h.drained_at IS NULL
                              FROM hosts h WHERE h.id = NEW.host_id), 0)
    WHERE host_id = NEW.host_id;
END;

DROP INDEX host_allocations_spread;
DROP INDEX host_allocations_pack;
CREATE INDEX host_allocations_spread
    ON host_allocations (placeable, free_memory_mib DESC, vms, host_id);
CREATE INDEX host_allocations_pack ON host_allocations (placeable, free_memory_mib, vms, host_id);
