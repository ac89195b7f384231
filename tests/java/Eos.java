// An exactly-once consume-transform-produce loop, as applications write it
// with the plain Java client: read_committed input in a consumer group, each
// batch's output and the group's offsets committed in one transaction.
//
//   java -cp '<kafka libs>/*' Eos.java <bootstrap> <input> <output> <group> <transactional id> <records>
//
// Transforms every record (value upper-cased, a header added, key, headers
// and timestamp kept) until it has committed <records> of them, then prints
// one JSON line: {"committed": n, "transactions": t}.
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;

public class Eos {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], input = args[1], output = args[2], group = args[3], txnId = args[4];
        int want = Integer.parseInt(args[5]);
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "200");
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        // A transaction that cannot complete fails within this, not never.
        pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "20000");
        int committed = 0, transactions = 0;
        Producer<byte[], byte[]> p = new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer());
        try (Consumer<byte[], byte[]> c = new KafkaConsumer<>(cp, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            p.initTransactions();
            c.subscribe(List.of(input));
            long deadline = System.currentTimeMillis() + 60_000;
            while (committed < want && System.currentTimeMillis() < deadline) {
                ConsumerRecords<byte[], byte[]> batch = c.poll(Duration.ofMillis(500));
                if (batch.isEmpty()) {
                    continue;
                }
                p.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                for (ConsumerRecord<byte[], byte[]> r : batch) {
                    String v = new String(r.value(), StandardCharsets.UTF_8).toUpperCase(Locale.ROOT);
                    ProducerRecord<byte[], byte[]> out = new ProducerRecord<>(output, null, r.timestamp(), r.key(),
                        v.getBytes(StandardCharsets.UTF_8));
                    for (Header h : r.headers()) {
                        out.headers().add(h);
                    }
                    out.headers().add("source-offset", Long.toString(r.offset()).getBytes(StandardCharsets.UTF_8));
                    p.send(out);
                    offsets.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                }
                p.sendOffsetsToTransaction(offsets, c.groupMetadata());
                p.commitTransaction();
                committed += batch.count();
                transactions++;
            }
        } finally {
            p.close(Duration.ofSeconds(10));
        }
        System.out.println("{\"committed\":" + committed + ",\"transactions\":" + transactions + "}");
    }
}
