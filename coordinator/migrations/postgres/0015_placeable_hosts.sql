-- A claim's placement walk reads only the hosts that may take VMs: each `host_allocations`
-- row says whether its host is placeable (connected and not drained), and both placement
-- indexes lead with it. Before, the walk passed over every unreachable or drained host
-- with more room than the best placeable one, and such hosts end up first: they receive
-- no VMs. Triggers keep the flag current on every change of a host's status or drain, by
-- whichever statement makes it.
ALTER TABLE host_allocations ADD COLUMN placeable INTEGER NOT NULL DEFAULT 0;

UPDATE host_allocations a
SET placeable = CASE WHEN h.status = 'connected' AND h.drained_at IS NULL THEN 1 ELSE 0 END
FROM hosts h WHERE h.id = a.host_id;

CREATE FUNCTION hosts_placeable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE host_allocations
    SET placeable = CASE WHEN NEW.status = 'connected' AND NEW.drained_at IS NULL
                         THEN 1 ELSE 0 END
    WHERE host_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER hosts_placeable AFTER UPDATE OF status, drained_at ON hosts
    FOR EACH ROW EXECUTE FUNCTION hosts_placeable();

CREATE FUNCTION host_allocations_placeable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.placeable := COALESCE((SELECT CASE WHEN h.status = 'connected' AND h.drained_at IS NULL
                                           THEN 1 ELSE 0 END
                               FROM hosts h WHERE h.id = NEW.host_id), 0);
    RETURN NEW;
END
$$;

CREATE TRIGGER host_allocations_placeable BEFORE INSERT ON host_allocations
    FOR EACH ROW EXECUTE FUNCTION host_allocations_placeable();

DROP INDEX host_allocations_spread;
DROP INDEX host_allocations_pack;
CREATE INDEX host_allocations_spread
    ON host_allocations (placeable, free_memory_mib DESC, vms, host_id COLLATE "C");
CREATE INDEX host_allocations_pack
    ON host_allocations (placeable, free_memory_mib, vms, host_id COLLATE "C");
