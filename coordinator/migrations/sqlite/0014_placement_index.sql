-- A claim's placement read walks an index instead of sorting every connected host: each
-- host's free memory (its memory less what its VMs take) is kept on its `host_allocations`
-- row, which every host now has from its first registration, and two indexes hold the rows
-- in the order each placement prefers them (free memory, then fewer VMs, then the smaller
-- host ID by its bytes). The ledger keeps the column current with the totals it charges and
-- releases; a registration sets it again when the host's memory changes.
ALTER TABLE host_allocations ADD COLUMN free_memory_mib INTEGER NOT NULL DEFAULT 0;

INSERT INTO host_allocations (host_id)
SELECT id FROM hosts WHERE id NOT IN (SELECT host_id FROM host_allocations);

UPDATE host_allocations
SET free_memory_mib = (SELECT h.memory_mib FROM hosts h WHERE h.id = host_allocations.host_id)
                      - memory_mib;

-- `spread`: most free memory first. `pack`: least free memory first.
CREATE INDEX host_allocations_spread ON host_allocations (free_memory_mib DESC, vms, host_id);
CREATE INDEX host_allocations_pack ON host_allocations (free_memory_mib, vms, host_id);
