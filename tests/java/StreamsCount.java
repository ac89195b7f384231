// A stateful Kafka Streams application: words counted by word, through a
// repartition topic (the input is keyed by sentence id, so groupBy must
// re-key) and a changelog-backed store, with processing.guarantee
// exactly_once_v2.
//
//   java -cp '<kafka libs>/*' StreamsCount.java <bootstrap> <application id> <input> <output> <words> <state dir>
//
// Runs until the output topic's latest counts add up to <words> (read with
// read_committed), then prints one JSON line: {"counts": {...}, "state": ...}.
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

public class StreamsCount {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], app = args[1], input = args[2], output = args[3];
        long words = Long.parseLong(args[4]);
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "200");
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "-1");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsBuilder b = new StreamsBuilder();
        b.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
            .flatMapValues(v -> Arrays.asList(v.split(" ")))
            .groupBy((k, w) -> w, Grouped.with("by-word", Serdes.String(), Serdes.String()))
            .count(Materialized.as("counts"))
            .toStream()
            .to(output, Produced.with(Serdes.String(), Serdes.Long()));
        KafkaStreams streams = new KafkaStreams(b.build(), p);
        streams.start();
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        Map<String, Long> counts = new TreeMap<>();
        try (Consumer<String, Long> c = new KafkaConsumer<>(cp, new StringDeserializer(), new LongDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 120_000;
            while (parts.isEmpty() && System.currentTimeMillis() < deadline) {
                c.partitionsFor(output).forEach(i -> parts.add(new TopicPartition(output, i.partition())));
            }
            c.assign(parts);
            while (System.currentTimeMillis() < deadline
                    && counts.values().stream().mapToLong(Long::longValue).sum() < words) {
                for (ConsumerRecord<String, Long> r : c.poll(Duration.ofMillis(500))) {
                    counts.put(r.key(), r.value());
                }
            }
        }
        String state = streams.state().toString();
        streams.close(Duration.ofSeconds(30));
        StringBuilder sb = new StringBuilder("{\"counts\":{");
        String sep = "";
        for (Map.Entry<String, Long> e : counts.entrySet()) {
            sb.append(sep).append('"').append(e.getKey()).append("\":").append(e.getValue());
            sep = ",";
        }
        sb.append("},\"state\":\"").append(state).append("\"}");
        System.out.println(sb);
    }
}
