-- sysbench 1.0's oltp_read_write as the end-to-end load of tests/e2e_mariadb.rs, with what
-- sysbench 1.0 lacks and the suite needs:
--   * e2e_reconnect: a new session for every transaction (1.0 has no --reconnect, and its
--     con:reconnect() crashes with a segmentation fault);
--   * a ledger row per transaction, written inside it, so that the database itself says how
--     many transactions committed (table e2e_ledger, created by the test);
--   * e2e_stop_file: the run ends once this file exists, so that a test stops the load on an
--     event instead of after a guessed duration;
--   * every SQL error restarts the transaction on a fresh session (where sysbench would stop
--     the thread, or crash reconnecting), and is counted by how it failed. Each thread prints
--     `e2e: thread=<n> attempts=<a> committed=<c> sessions=<s> cut=<x> closed=<y> errors=<z>
--     connect_failures=<f>` at the end: `sessions` = sessions opened, `cut` = session lost
--     inside a transaction, `closed` = session lost between transactions, `errors` = any
--     other SQL error, `connect_failures` = connects that failed (refused).
require("oltp_read_write")

local ffi = require("ffi")
ffi.cdef[[int usleep(unsigned int usec);]]

sysbench.cmdline.options.e2e_reconnect =
   {"Open a new session after every transaction", true}
sysbench.cmdline.options.e2e_stop_file =
   {"Stop the run once this file exists", ""}

local oltp_event, oltp_begin, oltp_commit = event, begin, commit

local attempts, committed, cut, closed, errors, connect_failures = 0, 0, 0, 0, 0, 0
-- thread_init opened the first.
local sessions = 1
-- Whether the attempt under way has begun its transaction: a session lost from then on
-- cut the transaction; before, the session was closed between transactions.
local in_txn = false
local LOST_SESSION = { [2006] = true, [2011] = true, [2013] = true, [2055] = true }
local REPORTED_ERRORS = 5

-- One write per line: print() writes its pieces separately, and the threads' lines would
-- run into each other.
local function say(fmt, ...)
   io.stdout:write(string.format(fmt, ...) .. "\n")
end

local function stop_requested()
   local path = sysbench.opt.e2e_stop_file
   if path == "" then
      return false
   end
   local f = io.open(path, "r")
   if f then
      f:close()
      return true
   end
   return false
end

-- Replaces the session: the old one is closed (whatever state it is in) and a new one
-- opened, retried every 10 ms while the proxy refuses (a stopped ODP).
local function new_session()
   close_statements()
   pcall(con.disconnect, con)
   while true do
      local ok, c = pcall(drv.connect, drv)
      if ok then
         con = c
         sessions = sessions + 1
         break
      end
      connect_failures = connect_failures + 1
      ffi.C.usleep(10000)
   end
   prepare_statements()
end

function begin()
   attempts = attempts + 1
   in_txn = false
   oltp_begin()
   in_txn = true
end

function commit()
   con:query(string.format("INSERT INTO e2e_ledger (thread, attempt) VALUES (%d, %d)",
                           sysbench.tid, attempts))
   oltp_commit()
   in_txn = false
   committed = committed + 1
end

function event()
   -- Checked before the transaction, so that sysbench counts every transaction begun.
   if stop_requested() then
      return true
   end
   oltp_event()
   if sysbench.opt.e2e_reconnect then
      new_session()
   end
end

-- Every SQL error restarts the event rather than ending the thread.
function sysbench.hooks.sql_error_ignorable(err)
   return true
end

function sysbench.hooks.before_restart_event(err)
   local lost = LOST_SESSION[err.sql_errno]
   if lost and in_txn then
      cut = cut + 1
   elseif lost then
      closed = closed + 1
   else
      errors = errors + 1
   end
   if cut + closed + errors <= REPORTED_ERRORS then
      say("e2e-error: thread=%d errno=%d in_txn=%s message=%s",
          sysbench.tid, err.sql_errno, tostring(in_txn), err.sql_errmsg)
   end
   if lost then
      new_session()
   elseif in_txn then
      -- A deadlock has rolled the transaction back already; a lock wait timeout only the
      -- statement.
      pcall(con.query, con, "ROLLBACK")
   end
   in_txn = false
end

local oltp_done = thread_done
function thread_done()
   say("e2e: thread=%d attempts=%d committed=%d sessions=%d cut=%d closed=%d errors=%d " ..
          "connect_failures=%d",
       sysbench.tid, attempts, committed, sessions, cut, closed, errors, connect_failures)
   oltp_done()
end
