// The Java client end to end: a producer with the client's defaults
// (idempotent, acks=all) and a compression type, then a consumer group with
// a group protocol (classic or consumer, KIP-848) reading it all back.
//
//   java -cp '<kafka libs>/*' RoundTrip.java <bootstrap> <topic> <records> <compression> <group protocol> <group>
//
// Prints one JSON line per record sent ({"sent": ...}: partition, offset,
// key, value, timestamp, headers) and per record consumed ({"got": ...}),
// then {"done": true, "assigned": [...]}; the test compares them.
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;

public class RoundTrip {
    static String q(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static String json(String kind, int partition, long offset, String key, String value, long ts, Iterable<Header> headers) {
        StringBuilder h = new StringBuilder("[");
        String sep = "";
        for (Header x : headers) {
            h.append(sep).append("[").append(q(x.key())).append(",").append(q(new String(x.value(), StandardCharsets.UTF_8))).append("]");
            sep = ",";
        }
        h.append("]");
        return "{\"" + kind + "\":{\"partition\":" + partition + ",\"offset\":" + offset + ",\"key\":" + q(key)
            + ",\"value\":" + q(value) + ",\"timestamp\":" + ts + ",\"headers\":" + h + "}}";
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], compression = args[3], protocol = args[4], group = args[5];
        int n = Integer.parseInt(args[2]);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        long base = System.currentTimeMillis() - 3_600_000L;
        List<String> lines = new ArrayList<>();
        try (Producer<String, String> p = new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> acks = new ArrayList<>();
            List<ProducerRecord<String, String>> sent = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                ProducerRecord<String, String> r = new ProducerRecord<>(topic, null, base + i, "key-" + (i % 23),
                    "value-" + i + "-" + "x".repeat(i % 50));
                r.headers().add("seq", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                r.headers().add("origin", "roundtrip".getBytes(StandardCharsets.UTF_8));
                sent.add(r);
                acks.add(p.send(r));
            }
            for (int i = 0; i < n; i++) {
                RecordMetadata m = acks.get(i).get();
                ProducerRecord<String, String> r = sent.get(i);
                lines.add(json("sent", m.partition(), m.offset(), r.key(), r.value(), r.timestamp(), r.headers()));
            }
        }
        lines.forEach(System.out::println);
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        cp.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        int got = 0;
        Set<String> assigned = new TreeSet<>();
        try (Consumer<String, String> c = new KafkaConsumer<>(cp, new StringDeserializer(), new StringDeserializer())) {
            c.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 90_000;
            while (got < n && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(500))) {
                    System.out.println(json("got", r.partition(), r.offset(), r.key(), r.value(), r.timestamp(), r.headers()));
                    got++;
                }
            }
            for (TopicPartition tp : c.assignment()) {
                assigned.add(tp.toString());
            }
            c.commitSync();
        }
        StringBuilder a = new StringBuilder("[");
        String sep = "";
        for (String s : assigned) {
            a.append(sep).append(q(s));
            sep = ",";
        }
        System.out.println("{\"done\":true,\"assigned\":" + a + "]}");
    }
}
