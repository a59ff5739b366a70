// A field app's flow through fieldsync's Kotlin bindings (crates/ffi) on the JVM, as the
// test `bindings::kotlin_app_runs_the_device_flow` drives it against a real server: the
// same steps and checks as examples/python/device_flow.py.
//
// Usage: java -cp device-flow.jar:jna.jar -Djna.library.path=LIBDIR DeviceFlowKt \
//            DEVICE_DIR SERVER_URL DEVICE_ID CODE
// (scripts/kotlin-example builds the jar from this file and the generated bindings.)
//
// Where the office must act (check the main database, change it), the program prints
// `ASK <what>` and waits for `ok` on stdin. A failed check ends it with status 1 and
// `FAILED: <what>` on stderr; the last line printed is `DONE`.

import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import uniffi.fieldsync_ffi.*

const val TASK = "north-inspections"

class CheckFailed(what: String) : Exception(what)

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw CheckFailed(what())
}

fun ask(what: String) {
    println("ASK $what")
    System.out.flush()
    val answer = readLine()?.trim()
    if (answer != "ok") throw CheckFailed("the office answered '$answer' to '$what'")
}

/** Runs [block], which must fail with [E]; that error. */
inline fun <reified E : Throwable> failsWith(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw CheckFailed("$what: expected ${E::class.simpleName}, got $e")
    }
    throw CheckFailed("$what: it succeeded")
}

fun text(v: String) = SqlValue.Text(v)

fun integer(v: Long) = SqlValue.Integer(v)

/** Counts progress reports per phase, on the operation's thread. */
class Counter : ProgressListener {
    val byPhase = mutableMapOf<String, Int>()

    override fun onProgress(progress: Progress) {
        val name = progress.phase.name
        byPhase[name] = (byPhase[name] ?: 0) + 1
    }

    fun count(phase: Phase) = byPhase[phase.name] ?: 0

    fun json() = byPhase.entries.joinToString(", ", "{", "}") { "\"${it.key}\": ${it.value}" }
}

fun names(replica: Replica): List<Pair<Long, String>> =
    replica.query("SELECT id, name FROM assets ORDER BY id", listOf()).rows.map { r ->
        Pair((r[0] as SqlValue.Integer).value, (r[1] as SqlValue.Text).value)
    }

fun main(args: Array<String>) {
    if (args.size != 4) {
        System.err.println("usage: DeviceFlowKt DEVICE_DIR SERVER_URL DEVICE_ID CODE")
        exitProcess(2)
    }
    try {
        flow(args[0], args[1], args[2], args[3])
    } catch (e: Throwable) {
        System.err.println("FAILED: ${e.message ?: e}")
        e.printStackTrace()
        exitProcess(1)
    }
    println("DONE")
    System.out.flush()
    exitProcess(0)
}

fun flow(deviceDir: String, server: String, deviceId: String, code: String) {
    val dev = Device.open(deviceDir)

    // Pairing, and the refusals an app shows with their exit-code meaning.
    val notPaired = failsWith<FieldsyncException.NotPaired>("login before pairing") {
        dev.login("ana", "ana-pw")
    }
    check(notPaired.exitCode == 4) { "not paired is 4: ${notPaired.exitCode}" }
    dev.pair(server, deviceId, code, null)
    val refused = failsWith<FieldsyncException.Refused>("a wrong password") {
        dev.login("ana", "wrong")
    }
    check(refused.exitCode == 4) { "refused is 4: ${refused.exitCode}" }
    dev.login("ana", "ana-pw")
    check(dev.tasks().any { it.name == TASK }) { "the task is offered" }

    // Download, its progress counted.
    var counter = Counter()
    var report = dev.download(TASK, DownloadOptions(), counter, null)
    check(report.rowsDown > 0uL) { "rows came: $report" }
    check(counter.count(Phase.TRANSFER) > 0) { "transfer progress: ${counter.byPhase}" }
    check(counter.count(Phase.STORE) > 0) { "store progress: ${counter.byPhase}" }
    val status = dev.status()
    check(status.user == "ana" && status.task == TASK) { "status: $status" }
    check(status.lastSync?.result == "ok") { "last sync: ${status.lastSync}" }
    println("progress ${counter.json()}")
    System.out.flush()

    // An edit through the library's own SQLite: journaled by the replica's triggers.
    val replica = dev.replica()
    val firstId = names(replica)[0].first
    val changed = replica.execute(
        "UPDATE assets SET name = ?1 WHERE id = ?2",
        listOf(text("from kotlin"), integer(firstId)),
    )
    check(changed == 1uL) { "one row changed: $changed" }
    val journal = dev.journal()
    check(journal.size == 1 && journal[0].table == "assets") { "journal: $journal" }
    check(dev.status().pending == 1uL) { "one pending change" }
    val forbidden = failsWith<FieldsyncException.Replica>("an insert the task forbids") {
        replica.execute(
            "INSERT INTO assets (id, name, category, status, region) " +
                "VALUES (?1, 'x', 'pump', 'active', 'north')",
            listOf(integer(999999)),
        )
    }
    check("does not allow insert" in forbidden.crewMessage) {
        "the trigger's refusal: ${forbidden.crewMessage}"
    }

    // Send; the office sees the edit.
    counter = Counter()
    report = dev.send(counter, null)
    check(report.rowsUp == 1uL) { "sent one: $report" }
    check(counter.count(Phase.SEND) > 0) { "send progress: ${counter.byPhase}" }
    check(dev.status().pending == 0uL) { "nothing pending after the send" }
    ask("office-sees $firstId from kotlin")

    // A conflict: the office and the crew change the same value; the server keeps the
    // office's (server-wins) and the device reports the crew's value as not kept.
    replica.execute(
        "UPDATE assets SET name = ?1 WHERE id = ?2",
        listOf(text("device value"), integer(firstId)),
    )
    ask("office-edits $firstId office value")
    report = dev.sync(DownloadOptions(), Counter(), null)
    check(report.conflicts == 1uL) { "one conflict: $report" }
    val conflicts = dev.conflicts()
    check(conflicts.size == 1) { "conflicts: $conflicts" }
    val c = conflicts[0]
    check(c.table == "assets" && c.column == "name") { "conflict: $c" }
    // JSON text of a string value.
    check(c.deviceJson == "\"device value\"") { "the crew's value: $c" }
    check(c.keptJson == "\"office value\"") { "the office's value: $c" }
    check(names(replica).toMap()[firstId] == "office value") {
        "the sync brought the office's value"
    }

    cancelFromAnotherThread(dev, replica)

    // Offline mode: the operations that need the server say so (3).
    dev.setMode(Mode.OFFLINE)
    val offline = failsWith<FieldsyncException.Offline>("a send in offline mode") {
        dev.send(null, null)
    }
    check(offline.exitCode == 3) { "offline is 3: ${offline.exitCode}" }
    dev.setMode(Mode.ONLINE)

    autoSync(dev, replica, firstId)
}

/**
 * Cancel from another thread while a download is in its transfer: the previous
 * replica's data stays.
 */
fun cancelFromAnotherThread(dev: Device, replica: Replica) {
    ask("office-changes-all")
    val before = names(replica)
    val token = CancelToken()
    val inTransfer = CountDownLatch(1)
    val cancelled = CountDownLatch(1)
    var cancelledCode: Int? = null
    var other: String? = null

    // Holds the download in its transfer until the main thread has cancelled.
    val hold = object : ProgressListener {
        override fun onProgress(progress: Progress) {
            if (progress.phase == Phase.TRANSFER) {
                inTransfer.countDown()
                cancelled.await(30, TimeUnit.SECONDS)
            }
        }
    }
    val worker = Thread {
        try {
            val report = dev.download(TASK, DownloadOptions(full = true), hold, token)
            other = "it completed: $report"
        } catch (e: FieldsyncException.Cancelled) {
            cancelledCode = e.exitCode
        } catch (e: Throwable) {
            other = e.toString()
        }
    }
    worker.start()
    check(inTransfer.await(60, TimeUnit.SECONDS)) { "the download reached its transfer" }
    token.cancel()
    check(token.isCancelled()) { "the token says cancelled" }
    cancelled.countDown()
    worker.join(60_000)
    check(!worker.isAlive) { "the download ended" }
    check(cancelledCode == 5) { "cancelled with 5: code $cancelledCode, other $other" }
    check(names(replica) == before) { "the previous replica's data is kept" }
    check(dev.status().lastSync?.result == "cancelled") { "recorded as cancelled" }
}

/**
 * Auto-sync: a watcher fed the app's power; a logout arms the ticket, docking sends. A
 * ticket may download only a task downloaded under it: a new online login (a new
 * ticket), then a synchronize under it.
 */
fun autoSync(dev: Device, replica: Replica, firstId: Long) {
    dev.login("ana", "ana-pw")
    dev.sync(DownloadOptions(), null, null)
    replica.execute(
        "UPDATE assets SET name = ?1 WHERE id = ?2",
        listOf(text("docked edit"), integer(firstId)),
    )
    val options = dev.setOptions(OptionsChange(autoSync = true))
    check(options.autoSync && options.downloadData) { "options: $options" }

    val power = object : PowerSource {
        @Volatile var present = false

        override fun external() = present
    }
    val notes = java.util.Collections.synchronizedList(mutableListOf<WatchNote>())
    val watching = CountDownLatch(1)
    val ended = CountDownLatch(1)
    val listener = object : WatchListener {
        override fun onNote(note: WatchNote) {
            notes.add(note)
            if (note is WatchNote.Watching) watching.countDown()
            if (note is WatchNote.Ended) ended.countDown()
        }

        override fun onProgress(progress: Progress) {}
    }
    val watcher = dev.watcher(power, 50uL)
    val runner = Thread { watcher.run(listener) }
    runner.start()
    check(watching.await(30, TimeUnit.SECONDS)) { "the watcher runs" }
    dev.logout()
    check(dev.status().ticketArmed) { "the logout armed the ticket" }
    power.present = true
    check(ended.await(60, TimeUnit.SECONDS)) { "the automatic attempt ended: $notes" }
    watcher.stop()
    runner.join(30_000)
    check(!runner.isAlive) { "the watcher stopped" }
    val end = synchronized(notes) { notes.filterIsInstance<WatchNote.Ended>().first() }
    check(end.outcome == "ok") { "the attempt: $end" }
    check(dev.status().pending == 0uL) { "the docked edit was sent" }
    ask("office-sees $firstId docked edit")
}
