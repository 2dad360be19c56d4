-- A lost host's VMs read as `unknown` without a write to each of them: the loss is recorded
-- once, on the host's row, with the reason its VMs show (NULL: the host's VMs read as
-- stored). The VMs keep their stored statuses; the inventory the host sends when it comes
-- back settles them and clears this column in the same transaction. Rows that older versions
-- wrote `unknown` keep that status until their host's next inventory settles them, as before.
ALTER TABLE hosts ADD COLUMN vms_lost_reason TEXT;
